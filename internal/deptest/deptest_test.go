package deptest

import (
	"strings"
	"testing"
)

// A forbidden package is found however deep, with the chain that brings it
// in; a prefix matches whole path elements only.
func TestViolations(t *testing.T) {
	m := Module + "/"
	bad, own, err := Violations(m+"hostctl", m+"pkg/fsroot", "github.com/spf13/cobra", m+"pkg/fs")
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) != 2 {
		t.Fatalf("got %d violations, want pkg/fsroot and cobra (pkg/fs is no prefix of pkg/fsroot):\n%s", len(bad), strings.Join(bad, "\n"))
	}
	for _, b := range bad {
		if !strings.Contains(b, "through "+m+"hostctl -> ") {
			t.Errorf("%q does not name the chain from hostctl", b)
		}
	}
	if !strings.Contains(strings.Join(own, " "), "hostctl/internal/cli") {
		t.Errorf("own packages %v lack hostctl/internal/cli", own)
	}
	if bad, _, err := Violations(m+"pkg/fsroot", "k8s.io/"); err != nil || len(bad) != 0 {
		t.Errorf("pkg/fsroot: %v, %v; want no k8s.io", bad, err)
	}
}
