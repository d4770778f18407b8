// Package machinetest is a machine provider for tests, at the boundary
// they cannot reach (Multipass, SSH, the lab): one running machine whose
// files are kept as Transfer wrote them, `sha256sum` answered from them as
// the real tool prints it, every other script recorded and answered by
// Answer.
package machinetest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/meshvm/meshvm/pkg/machine"
)

// Provider is one machine, M.
type Provider struct {
	M machine.Machine
	// Answer is a script's output; nil answers every script with nothing.
	Answer func(script string) []byte
	// Run, when set, answers instead of Answer, with the script's exit
	// as an error (a stand-in for a tool on the machine that can fail).
	Run func(script string) ([]byte, error)

	mu              sync.Mutex
	files           map[string][]byte
	scripts         []string
	launched, infos int
}

var _ machine.Provider = (*Provider)(nil)

// New returns a provider of m.
func New(m machine.Machine) *Provider { return &Provider{M: m, files: map[string][]byte{}} }

func (p *Provider) Launch(context.Context, machine.Spec) (machine.Machine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.launched++
	return p.M, nil
}

func (p *Provider) Info(context.Context, string) (machine.Machine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.infos++
	return p.M, nil
}

func (p *Provider) Transfer(_ context.Context, _, path string, data io.Reader, _ os.FileMode) error {
	b, err := io.ReadAll(data)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.files[path] = b
	return err
}

func (p *Provider) Exec(_ context.Context, _ string, _ io.Reader, args ...string) ([]byte, error) {
	script := args[len(args)-1]
	p.mu.Lock()
	if strings.HasPrefix(script, "sha256sum ") {
		defer p.mu.Unlock()
		var out strings.Builder
		for path, b := range p.files {
			fmt.Fprintf(&out, "%x  %s\n", sha256.Sum256(b), path)
		}
		return []byte(out.String()), nil
	}
	p.scripts = append(p.scripts, script)
	p.mu.Unlock()
	// Unlocked: a stand-in may read the files (File) it was sent.
	if p.Run != nil {
		return p.Run(script)
	}
	if p.Answer != nil {
		return p.Answer(script), nil
	}
	return nil, nil
}

func (p *Provider) Delete(context.Context, string) error { return nil }

// File is what Transfer last wrote at path.
func (p *Provider) File(path string) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.files[path]
}

// Files is how many paths were written.
func (p *Provider) Files() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.files)
}

// Scripts are the scripts run, sha256sum's aside, in order.
func (p *Provider) Scripts() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.scripts)
}

// Launched and Infos count the calls of Launch and Info.
func (p *Provider) Launched() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.launched
}

// Infos counts the calls of Info.
func (p *Provider) Infos() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.infos
}
