// Package deptest keeps each program's dependencies on its side of the
// tree, as tailscale's tstest/deptest does for its daemon: a test lists what
// a package may never import, directly or not, and fails naming the path
// that brought it in.
package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Module is meshvm's module path.
const Module = "github.com/meshvm/meshvm"

// Forbid fails t for every package in pkg's dependencies (its own imports
// included, tests not) that starts with one of forbidden, naming the import
// chain that reached it. It logs the module's own packages pkg builds on.
func Forbid(t *testing.T, pkg string, forbidden ...string) {
	t.Helper()
	bad, own, err := Violations(pkg, forbidden...)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Error(b)
	}
	t.Logf("%s builds on %d meshvm packages: %s", pkg, len(own), strings.Join(own, " "))
}

// Violations are Forbid's findings, one line each, and the module's own
// packages among pkg's dependencies (without the module prefix), sorted.
func Violations(pkg string, forbidden ...string) (bad, own []string, err error) {
	imports, err := list(pkg)
	if err != nil {
		return nil, nil, err
	}
	for p := range imports {
		if p == Module || strings.HasPrefix(p, Module+"/") {
			own = append(own, strings.TrimPrefix(p, Module+"/"))
		}
		for _, f := range forbidden {
			if under(p, f) {
				bad = append(bad, fmt.Sprintf("%s depends on %s (forbidden: %s), through %s", pkg, p, f, strings.Join(chain(imports, pkg, p), " -> ")))
			}
		}
	}
	slices.Sort(bad)
	slices.Sort(own)
	return bad, own, nil
}

// under says whether package p is prefix or below it ("k8s.io/" is any
// package of that host).
func under(p, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(p, prefix)
	}
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// Direct fails t for every direct import of pkg that starts with one of
// forbidden.
func Direct(t *testing.T, pkg string, forbidden ...string) {
	t.Helper()
	imports, err := list(pkg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range imports[pkg] {
		for _, f := range forbidden {
			if under(p, f) {
				t.Errorf("%s imports %s (forbidden here: %s)", pkg, p, f)
			}
		}
	}
}

// list is the import graph of pkg's dependencies, pkg included.
func list(pkg string) (map[string][]string, error) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports", pkg).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return nil, fmt.Errorf("go list -deps %s: %w\n%s", pkg, err, exit.Stderr)
	}
	if err != nil {
		return nil, err
	}
	imports := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			return nil, err
		}
		imports[p.ImportPath] = p.Imports
	}
	return imports, nil
}

// chain is a shortest import path from one package to another.
func chain(imports map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == to {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append([]string{p}, path...)
			}
			return path
		}
		for _, q := range imports[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{from, "?", to}
}
