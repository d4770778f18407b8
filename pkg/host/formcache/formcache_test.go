package formcache

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/meshvm/meshvm/pkg/filecodec"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pilot-agent")
	must(t, os.WriteFile(p, data, 0o755))
	return p
}

func compressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "istio.io/istio/pilot/pkg/xds.(*Server).Push%d ", i%3000)
	}
	return b.Bytes()[:n]
}

func TestCompressOnceUnderConcurrency(t *testing.T) {
	data := compressible(6 << 20)
	local := write(t, data)
	dir := filepath.Join(t.TempDir(), "zstd")
	// Ten VMs at once: five through one cache (goroutines of one hostctl),
	// five through caches of their own (as many hostctl processes).
	shared := New(dir)
	caches := []*Cache{shared, shared, shared, shared, shared}
	for range 5 {
		caches = append(caches, New(dir))
	}
	entries := make([]Entry, len(caches))
	var wg sync.WaitGroup
	for i, c := range caches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := c.Get(local)
			if err != nil {
				t.Error(err)
			}
			entries[i] = e
		}()
	}
	wg.Wait()
	fills := shared.fills.Load()
	for _, c := range caches[5:] {
		fills += c.fills.Load()
	}
	if fills != 1 {
		t.Errorf("got %d compressions, want 1", fills)
	}
	for i, e := range entries {
		if e != entries[0] || e.Form == "" {
			t.Fatalf("VM %d got %+v, VM 0 %+v: want the same entry with a form", i, e, entries[0])
		}
	}
	f, err := os.Open(entries[0].Form)
	must(t, err)
	defer f.Close()
	must(t, filecodec.Verify(f, int64(len(data)), entries[0].SHA256))
	left, err := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	must(t, err)
	if len(left) != 0 {
		t.Errorf("got temporary files %v left, want none", left)
	}
}

func TestIncompressibleAndSmallFilesHaveNoForm(t *testing.T) {
	random := make([]byte, 5<<20)
	rand.Read(random)
	tests := []struct {
		name string
		data []byte
	}{
		{"incompressible", random},
		{"small", compressible(64 << 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(filepath.Join(t.TempDir(), "zstd"))
			local := write(t, tt.data)
			for range 2 { // the second answer comes from the cache
				e, err := c.Get(local)
				must(t, err)
				if e.Form != "" || e.Size != int64(len(tt.data)) {
					t.Fatalf("got %+v, want no form and size %d", e, len(tt.data))
				}
			}
			if n := c.fills.Load(); n > 1 {
				t.Errorf("got %d compressions, want at most 1", n)
			}
			f, err := c.File("/usr/local/bin/envoy", local)
			must(t, err)
			if f.Form != nil {
				t.Errorf("got a delivery with a compressed form, want plain")
			}
		})
	}
}

func TestChangedFileGetsANewEntry(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "zstd"))
	local := write(t, compressible(5<<20))
	first, err := c.Get(local)
	must(t, err)
	must(t, os.WriteFile(local+".new", compressible(6<<20), 0o755))
	must(t, os.Rename(local+".new", local))
	second, err := c.Get(local)
	must(t, err)
	if second.SHA256 == first.SHA256 || second.Form == first.Form || second.Size != 6<<20 {
		t.Errorf("got %+v after %+v, want the new content's own entry", second, first)
	}
}
