package hostsfile

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fuzzEntries turns fuzzed text into entries: ";" separates entries, the
// first field of each is the address, the rest are names.
func fuzzEntries(spec string) []Entry {
	var entries []Entry
	for part := range strings.SplitSeq(spec, ";") {
		fields := strings.Fields(part)
		if len(fields) == 0 {
			continue
		}
		ip, _ := netip.ParseAddr(fields[0])
		entries = append(entries, Entry{IP: ip, Names: fields[1:]})
	}
	return entries
}

func FuzzMerge(f *testing.F) {
	block := beginMarker + "\n10.0.0.1\ta.example\n" + endMarker + "\n"
	seeds := []struct{ content, e1, e2 string }{
		{"", "10.0.0.7 istiod.istio-system.svc", "10.0.0.8 istiod.istio-system.svc"},
		{ubuntuHosts, "10.0.0.7 istiod.istio-system.svc istiod;fd00::1 b", ""},
		{"127.0.0.1 localhost", "10.0.0.7 a", "10.0.0.8 b"},
		{"127.0.0.1 localhost\r\n", "10.0.0.7 a", "10.0.0.8 b"},
		{"a\r\nb", "10.0.0.7 a", ""},
		{"a\r", "10.0.0.7 a", "10.0.0.8 b"},
		{"\r", "10.0.0.7 a", "10.0.0.8 b"},
		{"\n", "10.0.0.7 a", "10.0.0.8 b"},
		{"x\n" + block + "y\n", "10.0.0.7 a", "10.0.0.8 b"},
		{"x\n" + block, "10.0.0.7 a", ""},
		{"x\n" + strings.Replace(block, beginMarker, beginMarker+addedNewline, 1), "10.0.0.7 a", "10.0.0.8 b"},
		{"x" + strings.TrimSuffix(block, "\n"), "10.0.0.7 a", ""},
		{block + block, "10.0.0.7 a", ""},
		{beginMarker + "\nx\n", "10.0.0.7 a", ""},
		{endMarker + "\n", "10.0.0.7 a", ""},
		{"x\n" + beginMarker + addedNewline + "\r\n" + endMarker, "10.0.0.7 a", "10.0.0.8 b"},
		{"x", "fe80::1%eth0 a", "not-an-ip a"},
		{"x", "10.0.0.7 a_b", "10.0.0.7 a."},
	}
	for _, s := range seeds {
		f.Add([]byte(s.content), s.e1, s.e2)
	}
	f.Fuzz(func(t *testing.T, content []byte, spec1, spec2 string) {
		removed := Remove(content)
		if again := Remove(removed); !bytes.Equal(again, removed) {
			t.Fatalf("Remove(Remove(x)): got %q, want Remove(x) = %q", again, removed)
		}

		e1, e2 := fuzzEntries(spec1), fuzzEntries(spec2)
		blocks, structErr := findBlocks(content)
		y1, err := Merge(content, e1)
		if err != nil {
			if structErr == nil && len(blocks) <= 1 && validEntries(e1) {
				t.Fatalf("Merge of well-formed content and valid entries: got error %v, want nil", err)
			}
			return
		}
		if structErr != nil || len(blocks) > 1 {
			t.Fatalf("Merge of content with broken markers: got no error, want one")
		}
		if len(blocks) == 0 && !bytes.Equal(removed, content) {
			t.Fatalf("Remove(x) without a block: got %q, want x = %q", removed, content)
		}

		if y, err := Merge(y1, e1); err != nil || !bytes.Equal(y, y1) {
			t.Fatalf("Merge(Merge(x, e), e): got %q, %v, want %q, nil", y, err, y1)
		}
		if got := Remove(y1); !bytes.Equal(got, removed) {
			t.Fatalf("Remove(Merge(x, e)): got %q, want Remove(x) = %q", got, removed)
		}
		got, err := Entries(y1)
		if err != nil {
			t.Fatalf("Entries(Merge(x, e)): got error %v, want nil", err)
		}
		var want []Entry
		if len(e1) > 0 {
			want = e1
		}
		if diff := cmp.Diff(want, got, addrComparer); diff != "" {
			t.Fatalf("Entries(Merge(x, e)) (-want +got):\n%s", diff)
		}

		direct, err2 := Merge(content, e2)
		y2, err1 := Merge(y1, e2)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("Merge(Merge(x, e1), e2) error %v, Merge(x, e2) error %v: want both nil or both set", err1, err2)
		}
		if err1 == nil && !bytes.Equal(y2, direct) {
			t.Fatalf("Merge(Merge(x, e1), e2): got %q, want Merge(x, e2) = %q", y2, direct)
		}
	})
}

func validEntries(entries []Entry) bool {
	for _, e := range entries {
		if e.validate() != nil {
			return false
		}
	}
	return true
}
