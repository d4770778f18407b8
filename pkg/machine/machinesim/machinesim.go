// Package machinesim is the machine provider of a simulated fleet (agentsim's
// VMs in one process): each VM a Running machine at its loopback address, so
// the core's machine step passes as for real machines. Nothing is created,
// run or deleted: the VMs exist before the provider is asked, and what only
// a real machine can do (run a command, take a file, be launched anew or
// deleted) fails saying so.
package machinesim

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/meshvm/meshvm/pkg/machine"
)

// Provider is a fixed set of running machines.
type Provider struct {
	mu       sync.Mutex
	machines map[string]machine.Machine
	infos    int
}

var _ machine.Provider = (*Provider)(nil)

// New returns the machines named in addrs (name → address), Running, of
// this host's architecture.
func New(addrs map[string]string) *Provider {
	p := &Provider{machines: make(map[string]machine.Machine, len(addrs))}
	for name, addr := range addrs {
		p.machines[name] = machine.Machine{Name: name, State: machine.Running, Addresses: []string{addr}, Arch: runtime.GOARCH}
	}
	return p
}

func (p *Provider) get(name string) (machine.Machine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.infos++
	m, ok := p.machines[name]
	if !ok {
		return machine.Machine{}, fmt.Errorf("%s: %w: it is not one of the simulated fleet's %d VMs", name, machine.ErrNotFound, len(p.machines))
	}
	return m, nil
}

// Launch finds the machine running: a simulated fleet creates none.
func (p *Provider) Launch(_ context.Context, s machine.Spec) (machine.Machine, error) {
	return p.get(s.Name)
}

func (p *Provider) Info(_ context.Context, name string) (machine.Machine, error) { return p.get(name) }

// Infos is how many times a machine was looked up.
func (p *Provider) Infos() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.infos
}

// SetState changes a machine's state (a VM powered off), for tests of what
// the core does then.
func (p *Provider) SetState(name string, s machine.State) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.machines[name]
	if !ok {
		return fmt.Errorf("%s: %w", name, machine.ErrNotFound)
	}
	m.State = s
	p.machines[name] = m
	return nil
}

func (p *Provider) Exec(_ context.Context, name string, _ io.Reader, args ...string) ([]byte, error) {
	return nil, fmt.Errorf("%s is a simulated VM: it runs no commands (%q); its agent runs in the harness's process, already installed: onboard it without provisioning", name, args)
}

func (p *Provider) Transfer(_ context.Context, name, path string, _ io.Reader, _ os.FileMode) error {
	return fmt.Errorf("%s is a simulated VM: it takes no file at %s except through its agent; onboard it without provisioning", name, path)
}

func (p *Provider) Delete(_ context.Context, name string) error {
	return fmt.Errorf("%s is a simulated VM: it is deleted when the harness stops its fleet, not through the provider", name)
}
