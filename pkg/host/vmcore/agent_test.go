package vmcore

import (
	"errors"
	"testing"

	"github.com/meshvm/meshvm/pkg/machine"
)

// DialAgent says why a machine's agent cannot be reached with a type the
// caller chooses its advice from, and connects to one that can be.
func TestDialAgentTellsWhyNot(t *testing.T) {
	store, _ := openStore(t, "vm1")
	for _, tc := range []struct {
		m    machine.Machine
		want error
		msg  string
	}{
		{machine.Machine{Name: "vm1", State: machine.Stopped}, ErrNotRunning, "vm1 is stopped: machine not running"},
		{machine.Machine{Name: "vm1", State: machine.Running}, ErrNoAddress, "vm1 has no address: check that it is running"},
	} {
		c, err := DialAgent(tc.m, store)
		if c != nil || !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%s: got %v, %q; want %v, %q", tc.m.State, c, err, tc.want, tc.msg)
		}
	}
	c, err := DialAgent(machine.Machine{Name: "vm1", State: machine.Running, Addresses: []string{"127.0.0.1"}}, store)
	if err != nil {
		t.Fatalf("running at 127.0.0.1: %v", err)
	}
	c.Close()
}
