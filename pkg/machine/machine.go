// Package machine is the contract every machine provider meets (Multipass,
// SSH, the lab): hostctl provisions, reaches and cleans VMs and cluster nodes
// through it and never through a provider's own tool directly.
package machine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
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
	State State `json:"state"`
	// Addresses are IPv4/IPv6 addresses, the one to use first.
	Addresses []string `json:"addresses"`
	// Arch is the machine's GOARCH (amd64, arm64), for picking binaries.
	Arch string `json:"arch,omitempty"`
}

// State is a machine's power state in the provider's words. The constants
// are Multipass's (format_utils.cpp's status_string_for); the other
// providers report Running and Stopped only.
type State string

const (
	Running         State = "Running"
	Stopped         State = "Stopped"
	Starting        State = "Starting"
	Restarting      State = "Restarting"
	DelayedShutdown State = "Delayed Shutdown"
	Suspending      State = "Suspending"
	Suspended       State = "Suspended"
	Deleted         State = "Deleted" // deleted but not purged: it can still be recovered
	Unknown         State = "Unknown"
)

// Transitional reports a state that becomes another on its own, so the
// right move is to wait for it.
func (s State) Transitional() bool {
	switch s {
	case Starting, Restarting, DelayedShutdown, Suspending:
		return true
	}
	return false
}

// Lower is the state as the CLI prints it: "running", "delayed shutdown".
func (s State) Lower() string { return strings.ToLower(string(s)) }

// Running reports whether the machine is up.
func (m Machine) Running() bool { return m.State == Running }

// Address is the address to reach the machine at, "" when it has none (a
// stopped Multipass instance reports no IPv4 address).
func (m Machine) Address() string {
	if len(m.Addresses) == 0 {
		return ""
	}
	return m.Addresses[0]
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

// Stopper is a provider that can power a machine off, keeping its disk
// (Launch starts it again). SSH machines are not ours to power off.
type Stopper interface {
	Stop(ctx context.Context, name string) error
}

// TempPath is the temporary file a transfer writes beside dst.
func TempPath(dst string) string { return path.Join(path.Dir(dst), "."+path.Base(dst)+".hostctl-tmp") }

// AtomicWriteScript is the shell script a provider runs as root on the
// machine to write stdin to dst: into TempPath(dst), with mode, synced, then
// renamed over dst, so a broken transfer leaves the old file.
func AtomicWriteScript(dst string, mode os.FileMode) string {
	tmp := ShellQuote(TempPath(dst))
	return fmt.Sprintf("set -e; umask 077; mkdir -p %s; cat > %s; chmod %o %s; sync %s 2>/dev/null || sync; mv -f %s %s",
		ShellQuote(path.Dir(dst)), tmp, mode.Perm(), tmp, tmp, tmp, ShellQuote(dst))
}

// ShellQuote quotes s for sh, leaving plain words as they are.
func ShellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
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

// Differing returns which of files (path -> content) the machine does not
// hold as given, asking it once for every digest.
func Differing(ctx context.Context, p Provider, name string, files map[string][]byte) (map[string]bool, error) {
	paths := make([]string, 0, len(files))
	for f := range files {
		paths = append(paths, ShellQuote(f))
	}
	out, err := p.Exec(ctx, name, nil, "sh", "-c", "sha256sum "+strings.Join(paths, " ")+" 2>/dev/null || true")
	if err != nil {
		return nil, err
	}
	have := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if sum, file, ok := strings.Cut(line, "  "); ok {
			have[file] = sum
		}
	}
	differ := map[string]bool{}
	for f, data := range files {
		sum := sha256.Sum256(data)
		if have[f] != hex.EncodeToString(sum[:]) {
			differ[f] = true
		}
	}
	return differ, nil
}
