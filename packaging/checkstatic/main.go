// Command checkstatic fails unless every ELF file named is fully static: no
// program interpreter (PT_INTERP) and no shared library (DT_NEEDED). vmagent
// must run on any distribution's VM, whatever its libc, so `make build` runs
// this on each vmagent binary.
//
//	go run ./packaging/checkstatic FILE...
package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: checkstatic FILE...")
		os.Exit(2)
	}
	if err := run(os.Stdout, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "checkstatic: %v\n", err)
		os.Exit(1)
	}
}

// run checks every file, reports each static one on w, and returns every
// problem found.
func run(w io.Writer, paths []string) error {
	var errs []error
	for _, p := range paths {
		if err := check(p); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(w, "static: %s\n", p)
	}
	return errors.Join(errs...)
}

// check returns an error naming path unless it is a fully static ELF file.
func check(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w: want a Linux ELF executable", path, err)
	}
	defer f.Close()
	var problems []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(p.Open())
			problems = append(problems, fmt.Sprintf("has a program interpreter (%s)", strings.TrimRight(string(interp), "\x00")))
			break
		}
	}
	// ImportedLibraries reads DT_NEEDED; a file without a dynamic section has none.
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: read dynamic section: %w", path, err)
	}
	if len(libs) > 0 {
		problems = append(problems, fmt.Sprintf("needs shared libraries (%s)", strings.Join(libs, ", ")))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s is not static: it %s: build it with CGO_ENABLED=0", path, strings.Join(problems, " and "))
	}
	return nil
}
