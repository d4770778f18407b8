// Package machine is the contract every machine provider meets (Multipass,
// SSH, the lab): hostctl provisions, reaches and cleans VMs and cluster nodes
// through it and never through a provider's own tool directly.
package machine

import (
	"context"
	"errors"
	"io"
	"os"
)

// ErrNotFound reports a machine the provider does not know.
var ErrNotFound = errors.New("machine not found")

// Spec is what to launch.
type Spec struct {
	Name   string
	Image  string
	CPUs   int
	Memory string
	Disk   string
}

// Machine is what a provider reports.
type Machine struct {
	Name string `json:"name"`
	// State is the provider's word: Running, Stopped, ...
	State string `json:"state"`
	// Addresses are IPv4/IPv6 addresses, the one to use first.
	Addresses []string `json:"addresses"`
	// Arch is the machine's GOARCH (amd64, arm64), for picking binaries.
	Arch string `json:"arch,omitempty"`
}

// Provider launches and reaches machines. Every method is idempotent where it
// can be: Launch reuses a machine that exists, Delete of a missing one is fine.
type Provider interface {
	Launch(ctx context.Context, s Spec) (Machine, error)
	Info(ctx context.Context, name string) (Machine, error)
	// Exec runs a command as root and returns its combined output.
	Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error)
	// Transfer writes data to path on the machine atomically, as root.
	Transfer(ctx context.Context, name, path string, data io.Reader, mode os.FileMode) error
	Delete(ctx context.Context, name string) error
}

// GoArch maps `uname -m` to GOARCH.
func GoArch(unameM string) string {
	switch unameM {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	}
	return unameM
}
