package vmcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Why a machine's agent cannot be reached, told apart with errors.Is.
var (
	// ErrNotRunning is a machine that is not running: a stopped VM's token
	// is renewed when it is started and onboarded.
	ErrNotRunning = errors.New("machine not running")
	// ErrNoAddress is a running machine that reports no address (yet).
	ErrNoAddress = errors.New("has no address")
)

// DialAgent connects to the agent on m with the client identity store
// keeps, without waiting for it to answer (its first call says whether it
// does). A machine not running is ErrNotRunning, one without an address
// ErrNoAddress: the one place hostctl and the core reach a VM's agent.
//
// The agent must present a certificate of the agent CA naming the VM (every
// agent certificate names its VM besides its addresses): so an agent is
// its VM's wherever the VM's address goes, and another VM's agent that
// took over an address is refused rather than taken for this one.
func DialAgent(m machine.Machine, store Store) (*agentclient.Client, error) {
	switch {
	case !m.Running():
		return nil, fmt.Errorf("%s is %s: %w", m.Name, m.State.Lower(), ErrNotRunning)
	case m.Address() == "":
		return nil, errNoAddress(m.Name)
	}
	tlsCfg, err := store.AgentTLS(m.Name)
	if err != nil {
		return nil, err
	}
	return agentclient.Dial(net.JoinHostPort(m.Address(), onboard.AgentPort), tlsCfg)
}

func errNoAddress(vm string) error {
	return fmt.Errorf("%s %w: check that it is running", vm, ErrNoAddress)
}

// ProveAgent asks the agent at addr for its version, which it answers only
// over a certificate of the agent CA naming VM vm: proof that the VM is
// there now, which no WorkloadEntry (anyone allowed to write one could) is.
func ProveAgent(ctx context.Context, vm, addr string, store Store) (*agentv1.GetVersionResponse, error) {
	c, err := DialAgent(machine.Machine{Name: vm, State: machine.Running, Addresses: []string{addr}}, store)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return c.Version(ctx)
}
