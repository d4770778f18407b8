// Package deptest keeps each program's dependencies on its side of the
// tree, as tailscale's tstest/deptest does for its daemon: a test lists what
// a package may never import, directly or not, and fails naming the path
// that brought it in. Unlike tstest/deptest, it also fails on an entry that
// names nothing (a package renamed or moved away): such a guard would pass
// forever without guarding anything.
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
// chain that reached it, and for every entry of forbidden that names
// nothing (see Stale). It logs the module's own packages pkg builds on.
func Forbid(t testing.TB, pkg string, forbidden ...string) {
	t.Helper()
	failStale(t, forbidden)
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
// forbidden, and for every entry of forbidden that names nothing.
func Direct(t testing.TB, pkg string, forbidden ...string) {
	t.Helper()
	failStale(t, forbidden)
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

func failStale(t testing.TB, forbidden []string) {
	t.Helper()
	stale, err := Stale(forbidden...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stale {
		t.Errorf("forbidden entry %s names nothing: %s; fix or remove the entry, or the guard passes without guarding", s.Entry, s.Why)
	}
}

// StaleEntry is an entry of a forbidden list that names nothing.
type StaleEntry struct {
	Entry, Why string
}

// Stale returns the entries of forbidden that name nothing. An entry in
// this module or the standard library, or inside a module of the build
// graph (golang.org/x/crypto/ssh), must be a package or have packages below
// it (go list); any other must be a module of the build graph (go list -m
// all) or a prefix of one ("k8s.io/").
func Stale(forbidden ...string) ([]StaleEntry, error) {
	var mods []string // the build graph, needed for entries outside std and this module
	if slices.ContainsFunc(forbidden, func(f string) bool { return !local(f) }) {
		out, err := goList("list", "-m", "-f", "{{.Path}}", "all")
		if err != nil {
			return nil, err
		}
		mods = strings.Fields(out)
	}
	var stale []StaleEntry
	var patterns, packaged []string // what go list must find packages of
	for _, f := range forbidden {
		switch {
		case local(f):
		case slices.ContainsFunc(mods, func(m string) bool { return under(m, f) }):
			continue // a module, or a prefix of modules
		case slices.ContainsFunc(mods, func(m string) bool { return under(strings.TrimSuffix(f, "/"), m) }):
			// inside a module: one of its packages, or a directory of them
		default:
			stale = append(stale, StaleEntry{f, "no module of the build graph is, lies below or holds it"})
			continue
		}
		patterns = append(patterns, strings.TrimSuffix(f, "/")+"/...")
		packaged = append(packaged, f)
	}
	if len(patterns) == 0 {
		return stale, nil
	}
	out, err := goList(append([]string{"list", "-find", "-f", "{{.ImportPath}}"}, patterns...)...)
	if err != nil {
		return nil, err
	}
	pkgs := strings.Fields(out)
	for _, f := range packaged {
		if !slices.ContainsFunc(pkgs, func(p string) bool { return under(p, f) }) {
			stale = append(stale, StaleEntry{f, "no package is or lies below it"})
		}
	}
	// In the order given.
	slices.SortStableFunc(stale, func(a, b StaleEntry) int {
		return slices.Index(forbidden, a.Entry) - slices.Index(forbidden, b.Entry)
	})
	return stale, nil
}

// local says whether a forbidden entry is in this module or the standard
// library (no dot in its first element).
func local(f string) bool {
	first, _, _ := strings.Cut(f, "/")
	return under(f, Module) || !strings.Contains(first, ".")
}

func goList(args ...string) (string, error) {
	out, err := exec.Command("go", args...).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, exit.Stderr)
	}
	return string(out), err
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
