// Package instance numbers the labs on one machine so that two can run at
// once: each lab state directory claims a free number at its first up, and
// every port, address range and interface name of that lab derives from it.
// Instance 0 keeps the values the lab always had, so an existing lab keeps
// working. A claim is a file in ClaimDir naming the state directory; the
// directory records its number too, and a claim whose directory no longer
// records it (the lab was removed) is free again.
package instance

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ClaimDir holds one file per claimed instance, machine-wide. It outlives a
// reboot, as the labs' state directories do, so a lab keeps its number.
var ClaimDir = "/var/lib/meshvm/lab-instances"

// Max bounds the instances: their VM ranges are 10.213.0.0/16 up to
// 10.(213+Max-1).0.0/16 and their port blocks stay below Linux's ephemeral
// ports (32768).
const Max = 32

// file is the state directory's record of its number.
const file = "instance"

// Instance is one lab's number on this machine.
type Instance struct {
	N int `json:"n"`
}

// Of is the number the lab state directory dir recorded; a directory that
// recorded none is instance 0 (a lab from before instances, or none yet).
func Of(dir string) Instance {
	n, ok := recorded(dir)
	if !ok {
		return Instance{}
	}
	return Instance{N: n}
}

// Lookup is Of for a lab that exists: ok is false when dir holds no lab
// (none recorded and no state from before instances), so a caller acting
// on a lab that is gone does not act on instance 0's.
func Lookup(dir string) (inst Instance, ok bool) {
	if n, had := recorded(dir); had {
		return Instance{N: n}, true
	}
	return Instance{}, legacy(dir)
}

// Recorded is the instance dir claimed, if it claimed one: what a lab's
// down may give back (a run with ports of its own, such as a benchmark's,
// claims none and must not touch instance 0's).
func Recorded(dir string) (Instance, bool) {
	n, ok := recorded(dir)
	return Instance{N: n}, ok
}

func recorded(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil && n >= 0 && n < Max
}

// Claim returns dir's instance, claiming a free one machine-wide the first
// time (the one it recorded before, if free; a lab that already has state
// but recorded none predates instances and must be 0). It is idempotent.
func Claim(dir string) (Instance, error) {
	dir, err := canonical(dir)
	if err != nil {
		return Instance{}, err
	}
	unlock, err := lock()
	if err != nil {
		return Instance{}, err
	}
	defer unlock()
	want, had := recorded(dir)
	if had {
		switch holder := holderOf(want); {
		case holder == dir:
			return Instance{N: want}, nil
		case holder == "":
			return Instance{N: want}, take(want, dir)
		}
		// Another lab took the number while this one held no claim (its
		// claim file was lost): move on to a free one.
	} else if legacy(dir) {
		switch holder := holderOf(0); holder {
		case "", dir:
			return Instance{}, take(0, dir)
		default:
			return Instance{}, fmt.Errorf("the lab in %s predates lab instances and uses instance 0's ports, addresses and names, which the lab in %s holds: "+
				"run hostctl down for one of them (or remove %s if that lab is gone)", dir, holder, filepath.Join(ClaimDir, "0"))
		}
	}
	for n := 0; n < Max; n++ {
		if holderOf(n) == "" {
			return Instance{N: n}, take(n, dir)
		}
	}
	return Instance{}, fmt.Errorf("all %d lab instances on this machine are in use (%s): run hostctl down in a lab you no longer need", Max, ClaimDir)
}

// legacy reports whether dir holds a lab made before instances existed:
// its control plane's PKI or a VM's slot record.
func legacy(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cluster", "kubeconfig"))
	vms, _ := filepath.Glob(filepath.Join(dir, "vms", "*.json"))
	return err == nil || len(vms) > 0
}

// holderOf is the state directory holding instance n, or "" when it is
// free: unclaimed, or claimed by a directory that no longer records n.
func holderOf(n int) string {
	b, err := os.ReadFile(claimPath(n))
	if err != nil {
		return ""
	}
	dir := strings.TrimSpace(string(b))
	if got, ok := recorded(dir); !ok || got != n {
		return ""
	}
	return dir
}

func claimPath(n int) string { return filepath.Join(ClaimDir, strconv.Itoa(n)) }

// canonical is dir as a claim names it: absolute, its links resolved, so
// a lab reached through a symlinked state directory (a second engineer's)
// is the lab that claimed, not a new one taking another instance and
// rewriting the lab's record under it.
func canonical(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		return real, nil
	}
	return dir, nil // not made yet
}

// take records n in the claim directory and in dir, each atomically.
func take(n int, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeAtomic(claimPath(n), dir+"\n"); err != nil {
		return fmt.Errorf("claim lab instance %d: %w", n, err)
	}
	return writeAtomic(filepath.Join(dir, file), strconv.Itoa(n)+"\n")
}

func writeAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Release gives dir's instance back (at down); the directory's own record
// goes with the directory.
func Release(dir string) error {
	dir, err := canonical(dir)
	if err != nil {
		return err
	}
	n, ok := recorded(dir)
	if !ok {
		return nil
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	if holderOf(n) != dir {
		return nil
	}
	if err := os.Remove(claimPath(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Port is the instance's port for what instance 0 serves on base: other
// instances get a block of 200 ports from 24000, off being the place in it.
func (i Instance) Port(base, off int) int {
	if i.N == 0 {
		return base
	}
	return 24000 + 200*i.N + off
}

// Places in an instance's port block.
const (
	APIPort = iota
	EtcdPort
	EtcdPeerPort
	ControllerManagerPort
	ControllerProbePort
	ControllerMetricsPort
	// ControllerReplicaPorts is where the controller's further replicas'
	// ports start (a failover test's), two each, up to IstiodPorts.
	ControllerReplicaPorts = 6
	// IstiodPorts is where the istiods' ports start, RevisionPorts apart.
	IstiodPorts   = 20
	RevisionPorts = 10
)

// Octet is the second octet of the instance's VM range, 10.octet.0.0/16.
func (i Instance) Octet() byte { return byte(213 + i.N) }

// IstiodIP is the one address the instance's VMs reach istiod on, whatever
// their own: on the host's loopback, the last /30 of the VM range kept
// from the VMs.
func (i Instance) IstiodIP() net.IP { return net.IPv4(10, i.Octet(), 255, 253) }

// Names is what the instance adds to interface and namespace names:
// nothing for instance 0, its number otherwise.
func (i Instance) Names() string {
	if i.N == 0 {
		return ""
	}
	return strconv.Itoa(i.N)
}

func (i Instance) String() string { return "lab instance " + strconv.Itoa(i.N) }
