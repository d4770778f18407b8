// Package multipass is the machine provider that drives the multipass CLI:
// launch, info, list, exec, transfer and delete, reading state only from
// `--format json` output (never from the text tables). A machine that exists
// is reused, never recreated.
package multipass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"

	"github.com/meshvm/meshvm/pkg/machine"
)

// Provider runs the multipass binary.
type Provider struct {
	// Binary is the multipass executable; empty means "multipass" on PATH.
	Binary string
}

var _ machine.Provider = (*Provider)(nil)

// info is the part of `multipass info --format json` read here
// (src/client/cli/formatter/json_formatter.cpp in canonical/multipass).
type info struct {
	Errors []any                   `json:"errors"`
	Info   map[string]instanceInfo `json:"info"`
}

type instanceInfo struct {
	State        string   `json:"state"`
	IPv4         []string `json:"ipv4"`
	Release      string   `json:"release"`
	ImageRelease string   `json:"image_release"`
	CPUCount     string   `json:"cpu_count"`
}

type list struct {
	List []struct {
		Name  string   `json:"name"`
		State string   `json:"state"`
		IPv4  []string `json:"ipv4"`
	} `json:"list"`
}

func (p *Provider) bin() string {
	if p.Binary != "" {
		return p.Binary
	}
	return "multipass"
}

// run executes multipass and returns stdout; errors carry its stderr.
func (p *Provider) run(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	bin, err := exec.LookPath(p.bin())
	if err != nil {
		return nil, fmt.Errorf("multipass not found: install it (https://multipass.run), or use another provider (--provider lab for the local lab; cluster.provider kubeconfig with ssh machines for a cluster and VMs of yours)")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not exist") {
			return nil, fmt.Errorf("multipass %s: %w: %s", args[0], machine.ErrNotFound, msg)
		}
		return nil, fmt.Errorf("multipass %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// Info reports one instance.
func (p *Provider) Info(ctx context.Context, name string) (machine.Machine, error) {
	out, err := p.run(ctx, nil, "info", name, "--format", "json")
	if err != nil {
		return machine.Machine{}, err
	}
	var in info
	if err := json.Unmarshal(out, &in); err != nil {
		return machine.Machine{}, fmt.Errorf("multipass info %s: unexpected output (%v): is this multipass version supported?", name, err)
	}
	ii, ok := in.Info[name]
	if !ok {
		return machine.Machine{}, fmt.Errorf("multipass info %s: %w", name, machine.ErrNotFound)
	}
	return machine.Machine{Name: name, State: ii.State, Addresses: ii.IPv4}, nil
}

// List reports every instance.
func (p *Provider) List(ctx context.Context) ([]machine.Machine, error) {
	out, err := p.run(ctx, nil, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var l list
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("multipass list: unexpected output: %v", err)
	}
	ms := make([]machine.Machine, 0, len(l.List))
	for _, i := range l.List {
		ms = append(ms, machine.Machine{Name: i.Name, State: i.State, Addresses: i.IPv4})
	}
	return ms, nil
}

// Launch creates the instance unless it exists; a stopped one is started.
// The architecture is read from the machine itself.
func (p *Provider) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	m, err := p.Info(ctx, s.Name)
	switch {
	case errors.Is(err, machine.ErrNotFound):
		args := []string{"launch", orDefault(s.Image, "22.04"), "--name", s.Name}
		if s.CPUs > 0 {
			args = append(args, "--cpus", strconv.Itoa(s.CPUs))
		}
		if s.Memory != "" {
			args = append(args, "--memory", s.Memory)
		}
		if s.Disk != "" {
			args = append(args, "--disk", s.Disk)
		}
		if _, err := p.run(ctx, nil, args...); err != nil {
			return machine.Machine{}, err
		}
	case err != nil:
		return machine.Machine{}, err
	case m.State == "Stopped" || m.State == "Suspended":
		if _, err := p.run(ctx, nil, "start", s.Name); err != nil {
			return machine.Machine{}, err
		}
	}
	if m, err = p.Info(ctx, s.Name); err != nil {
		return machine.Machine{}, err
	}
	if m.State != "Running" || m.Address() == "" {
		return m, fmt.Errorf("multipass instance %s is %s with no IPv4 address: check multipass info %s", s.Name, m.State, s.Name)
	}
	arch, err := p.Exec(ctx, s.Name, nil, "uname", "-m")
	if err != nil {
		return m, err
	}
	m.Arch = machine.GoArch(strings.TrimSpace(string(arch)))
	return m, nil
}

// Exec runs args as root on the instance.
func (p *Provider) Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error) {
	return p.run(ctx, stdin, append([]string{"exec", name, "--", "sudo", "--"}, args...)...)
}

// Transfer copies data to the instance's /tmp with `multipass transfer`
// (which writes as the default user), then installs it as root with its mode
// and renames it over dst.
func (p *Provider) Transfer(ctx context.Context, name, dst string, data io.Reader, mode os.FileMode) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("%s: transfer destination %q must be absolute", name, dst)
	}
	local, err := os.CreateTemp("", "hostctl-transfer-")
	if err != nil {
		return err
	}
	defer os.Remove(local.Name())
	if _, err := io.Copy(local, data); err != nil {
		local.Close()
		return err
	}
	if err := local.Close(); err != nil {
		return err
	}
	staged := "/tmp/." + path.Base(dst) + ".hostctl"
	if _, err := p.run(ctx, nil, "transfer", local.Name(), name+":"+staged); err != nil {
		return err
	}
	tmp := machine.TempPath(dst)
	script := fmt.Sprintf("set -e; mkdir -p '%s'; install -m %o '%s' '%s'; rm -f '%s'; sync; mv -f '%s' '%s'",
		path.Dir(dst), mode.Perm(), staged, tmp, staged, tmp, dst)
	_, err = p.Exec(ctx, name, nil, "sh", "-c", script)
	return err
}

// Stop powers the instance off, keeping its disk.
func (p *Provider) Stop(ctx context.Context, name string) error {
	_, err := p.run(ctx, nil, "stop", name)
	return err
}

// Delete deletes and purges the instance; a missing one is fine.
func (p *Provider) Delete(ctx context.Context, name string) error {
	_, err := p.run(ctx, nil, "delete", "--purge", name)
	if errors.Is(err, machine.ErrNotFound) {
		return nil
	}
	return err
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
