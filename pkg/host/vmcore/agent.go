package vmcore

import (
	"errors"
	"fmt"
	"net"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
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
func DialAgent(m machine.Machine, store Store) (*agentclient.Client, error) {
	switch {
	case !m.Running():
		return nil, fmt.Errorf("%s is %s: %w", m.Name, m.State.Lower(), ErrNotRunning)
	case m.Address() == "":
		return nil, errNoAddress(m.Name)
	}
	tlsCfg, err := store.AgentTLS(m.Address())
	if err != nil {
		return nil, err
	}
	return agentclient.Dial(net.JoinHostPort(m.Address(), onboard.AgentPort), tlsCfg)
}

func errNoAddress(vm string) error {
	return fmt.Errorf("%s %w: check that it is running", vm, ErrNoAddress)
}
