package deptest

import (
	"fmt"
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

// recorder is a testing.TB that keeps the failures it is given.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()             {}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Error(args ...any)   { r.errs = append(r.errs, fmt.Sprint(args...)) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatal(args ...any) { r.TB.Fatal(args...) }

// A guard whose entry names no package or module fails naming the entry,
// where tailscale's deptest would pass: a renamed package must not turn a
// guard off. Entries that exist (packages, prefixes, modules, packages
// inside a module, the standard library) pass.
func TestStaleEntriesFail(t *testing.T) {
	m := Module + "/"
	real := []string{m + "pkg/host", m + "bench", m + "pkg/", "k8s.io/", "istio.io/", "sigs.k8s.io/controller-runtime", "golang.org/x/crypto/ssh", "net/http"}
	gone := []string{m + "pkg/nosuch", m + "pkg/hos", "example.invalid/", "k8s.io/nosuch-module", "golang.org/x/crypto/nosuch", "net/nosuch"}
	stale, err := Stale(append(real, gone...)...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range stale {
		got = append(got, s.Entry)
	}
	if strings.Join(got, " ") != strings.Join(gone, " ") {
		t.Errorf("stale entries: got %q, want %q", got, gone)
	}

	for _, guard := range []func(testing.TB, string, ...string){Forbid, Direct} {
		r := &recorder{TB: t}
		guard(r, m+"pkg/fsroot", "k8s.io/", m+"pkg/nosuch")
		if len(r.errs) != 1 || !strings.Contains(r.errs[0], m+"pkg/nosuch") || !strings.Contains(r.errs[0], "names nothing") {
			t.Errorf("a guard forbidding %spkg/nosuch reported %q, want one failure naming it", m, r.errs)
		}
	}
}
