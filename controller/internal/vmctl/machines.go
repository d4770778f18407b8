package vmctl

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/meshvm/meshvm/pkg/machine"
)

// errNotOurs: only a workstation creates machines and installs agents.
var errNotOurs = errors.New("the controller reaches VMs only through their agents: create machines and install agents with hostctl")

// addressed is the machine provider of a controller: it knows one VM by its
// address and reaches it only through its agent. The core learns the
// architecture from the agent.
type addressed struct {
	name, addr string
}

func (a addressed) Info(_ context.Context, name string) (machine.Machine, error) {
	if name != a.name {
		return machine.Machine{}, machine.ErrNotFound
	}
	return machine.Machine{Name: name, State: machine.Running, Addresses: []string{a.addr}}, nil
}

func (addressed) Launch(context.Context, machine.Spec) (machine.Machine, error) {
	return machine.Machine{}, errNotOurs
}

func (addressed) Exec(context.Context, string, io.Reader, ...string) ([]byte, error) {
	return nil, errNotOurs
}

func (addressed) Transfer(context.Context, string, string, io.Reader, os.FileMode) error {
	return errNotOurs
}

func (addressed) Delete(context.Context, string) error { return errNotOurs }
