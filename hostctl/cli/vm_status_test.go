package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/statedir"
)

// infoOnly is a machine provider that only reports machines.
type infoOnly struct {
	machine.Provider
	m map[string]machine.Machine
}

func (p infoOnly) Info(_ context.Context, name string) (machine.Machine, error) {
	if m, ok := p.m[name]; ok {
		return m, nil
	}
	return machine.Machine{}, machine.ErrNotFound
}

// A stopped Multipass instance reports no address; status says how to
// start it instead of failing, and so does a machine that is gone.
func TestStatusOfMachinesNotRunning(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := infoOnly{m: map[string]machine.Machine{"vm1": {Name: "vm1", State: "Stopped"}}}
	s := vmStatus(context.Background(), config.Default(), state, p, nil, nil, "vm1")
	if s.OK || s.Machine != "stopped" || s.Address != "" || s.Next != "run hostctl vm start vm1 (or hostctl up)" {
		t.Errorf("stopped: got %+v", s)
	}
	s = vmStatus(context.Background(), config.Default(), state, p, nil, nil, "vm2")
	if s.OK || s.Machine != "absent" || !strings.Contains(s.Next, "hostctl up") {
		t.Errorf("absent: got %+v", s)
	}
}

// A stopped Multipass instance has no address: its WorkloadEntry is found at
// the one it was onboarded with (vm rm deletes it there, vm start waits for
// a new one).
func TestEntryAddressOfAStoppedMachine(t *testing.T) {
	state, err := statedir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stopped := machine.Machine{Name: "vm1", State: "Stopped"}
	if got := entryAddress(state, stopped); got != "" {
		t.Errorf("never onboarded: got %q, want none", got)
	}
	if err := state.WriteSecret(addressFile("vm1"), []byte("192.168.64.7")); err != nil {
		t.Fatal(err)
	}
	if got := entryAddress(state, stopped); got != "192.168.64.7" {
		t.Errorf("onboarded at 192.168.64.7: got %q", got)
	}
	running := machine.Machine{Name: "vm1", State: "Running", Addresses: []string{"192.168.64.9"}}
	if got := entryAddress(state, running); got != "192.168.64.9" {
		t.Errorf("running: got %q, want its own address", got)
	}
}
