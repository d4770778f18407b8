// Package labtest gates and locates what the lab tests share: they run only
// when asked (they boot VMs, build and run a control plane) and they share
// one cache of the Debian root filesystem and the built binaries.
package labtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshvm/meshvm/lab/build"
)

// ModuleDir is lab/toolchain, found up from the directory go test runs a
// package's tests in (its own), whatever its depth in the tree.
var ModuleDir = moduleDir()

func moduleDir() string {
	if d, err := build.ModuleDir(); err == nil {
		return d
	}
	return filepath.Join("lab", "toolchain")
}

// RequireVMs skips unless MESHVM_LAB is set (make test sets it).
func RequireVMs(t *testing.T) {
	t.Helper()
	if os.Getenv("MESHVM_LAB") == "" {
		t.Skip("lab test: set MESHVM_LAB=1 (make test does) to boot systemd VMs")
	}
}

// RequireBuild skips unless MESHVM_LAB_BUILD is set (make test sets it).
func RequireBuild(t *testing.T) {
	t.Helper()
	if os.Getenv("MESHVM_LAB_BUILD") == "" {
		t.Skip("set MESHVM_LAB_BUILD=1 (make test does) to build and run the lab control plane")
	}
}

// Cache is the shared lab cache directory.
func Cache() string { return build.DefaultCacheDir() }
