package istioinstall

import "testing"

func TestSkew(t *testing.T) {
	for _, c := range []struct {
		proxy, istiod string
		ok            bool
	}{
		{"1.31.0", "1.31.0", true},
		{"1.31.4", "1.31.0", true}, // patches are not skew
		{"1.30.2", "1.31.0", true}, // one minor behind
		{"1.29.0", "1.31.0", false},
		{"1.32.0", "1.31.5", false}, // ahead of istiod
		{"2.0.0", "1.31.0", false},
		{"1.31.0-beta.1", "1.31.0", true},
		{"dev", "1.31.0", true}, // not judged
		{"", "", true},
	} {
		if ok, detail := Skew(c.proxy, c.istiod); ok != c.ok || detail == "" {
			t.Errorf("Skew(%q, %q) = %v %q, want %v", c.proxy, c.istiod, ok, detail, c.ok)
		}
	}
}

func TestVersionOf(t *testing.T) {
	for in, want := range map[string]string{
		"1.31.0-unknown-unknown\n":     "1.31.0",
		"1.31.2-6f0fc0e0a1b2-Clean":    "1.31.2",
		"1.32.0-beta.1-6f0fc0e0-Clean": "1.32.0-beta.1",
	} {
		if got := VersionOf(in); got != want {
			t.Errorf("VersionOf(%q) = %q, want %q", in, got, want)
		}
	}
}
