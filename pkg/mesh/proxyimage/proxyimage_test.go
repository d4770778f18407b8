package proxyimage

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// layer is a tar layer holding files (path -> content).
func layer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	data := tarOf(t, files)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// proxyImage is a proxyv2-shaped image for arch: a base layer, then the
// sidecar's files, with a stale envoy in the base that the top layer replaces.
func proxyImage(t *testing.T, arch string, omit string) v1.Image {
	t.Helper()
	top := map[string]string{
		"usr/local/bin/envoy":                           "envoy for " + arch,
		"usr/local/bin/pilot-agent":                     "pilot-agent for " + arch,
		"var/lib/istio/envoy/envoy_bootstrap_tmpl.json": `{"bootstrap": "` + arch + `"}`,
	}
	delete(top, omit)
	img, err := mutate.AppendLayers(empty.Image,
		layer(t, map[string]string{"etc/os-release": "ID=ubuntu", "usr/local/bin/envoy": "an older envoy"}),
		layer(t, top))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// registryWith serves a real registry in-process, counting blob pulls.
func registryWith(t *testing.T) (host string, blobs *atomic.Int32) {
	t.Helper()
	blobs = &atomic.Int32{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobs.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), blobs
}

func push(t *testing.T, ref string, idx v1.ImageIndex, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if idx != nil {
		err = remote.WriteIndex(r, idx)
	} else {
		err = remote.Write(r, img)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestFetchPerArchitectureAndCache(t *testing.T) {
	host, blobs := registryWith(t)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: proxyImage(t, "amd64", ""), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: proxyImage(t, "arm64", ""), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref := Image(host+"/istio", "1.31.0")
	push(t, ref, idx, nil)

	f := &Fetcher{CacheDir: t.TempDir()}
	ctx := context.Background()
	got := map[string]Sidecar{}
	for _, arch := range []string{"amd64", "arm64"} {
		s, err := f.Fetch(ctx, ref, arch)
		if err != nil {
			t.Fatal(err)
		}
		if s.Cached {
			t.Errorf("%s: first fetch reported cached", arch)
		}
		for file, want := range map[string]string{"envoy": "envoy for " + arch, "pilot-agent": "pilot-agent for " + arch,
			"envoy_bootstrap_tmpl.json": `{"bootstrap": "` + arch + `"}`} {
			b, err := os.ReadFile(s.Path(file))
			if err != nil || string(b) != want {
				t.Errorf("%s %s: %q, %v; want %q (the top layer's)", arch, file, b, err, want)
			}
		}
		if st, _ := os.Stat(s.Path("envoy")); st.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s envoy is not executable: %v", arch, st.Mode())
		}
		got[arch] = s
	}
	if got["amd64"].Digest == got["arm64"].Digest || got["amd64"].Dir == got["arm64"].Dir {
		t.Errorf("both architectures share digest %s", got["amd64"].Digest)
	}

	pulled := blobs.Load()
	s, err := f.Fetch(ctx, ref, "arm64")
	if err != nil || !s.Cached || s.Digest != got["arm64"].Digest {
		t.Errorf("second fetch: %+v, %v; want the cached arm64 files", s, err)
	}
	if n := blobs.Load() - pulled; n != 0 {
		t.Errorf("second fetch pulled %d blobs, want none", n)
	}
}

func TestFetchErrorsNameTheFix(t *testing.T) {
	host, _ := registryWith(t)
	ctx := context.Background()
	f := &Fetcher{CacheDir: t.TempDir()}

	single := Image(host+"/istio", "amd64-only")
	push(t, single, nil, proxyImage(t, "amd64", ""))
	if _, err := f.Fetch(ctx, single, "amd64"); err != nil {
		t.Fatal(err)
	}
	// Cached for amd64, the same digest is still refused for arm64.
	if _, err := f.Fetch(ctx, single, "arm64"); err == nil || !strings.Contains(err.Error(), "use a multi-architecture tag") {
		t.Errorf("arm64 VM, amd64 image: %v", err)
	}

	broken := Image(host+"/istio", "no-envoy")
	push(t, broken, nil, proxyImage(t, "amd64", "usr/local/bin/pilot-agent"))
	if _, err := f.Fetch(ctx, broken, "amd64"); err == nil || !strings.Contains(err.Error(), "lacks /usr/local/bin/pilot-agent") {
		t.Errorf("image without pilot-agent: %v", err)
	}
	entries, _ := os.ReadDir(f.CacheDir + "/proxyv2")
	if len(entries) != 1 {
		t.Errorf("cache holds %d entries, want only the good amd64 pull (a failed pull leaves nothing)", len(entries))
	}

	if _, err := f.Fetch(ctx, Image(host+"/istio", "absent"), "amd64"); err == nil || !strings.Contains(err.Error(), "is the tag published") {
		t.Errorf("absent tag: %v", err)
	}
	if _, err := f.Fetch(ctx, "not a ref!", "amd64"); err == nil || !strings.Contains(err.Error(), "registry/repository:tag") {
		t.Errorf("bad ref: %v", err)
	}
}
