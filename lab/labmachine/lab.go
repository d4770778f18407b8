// Package lab is the machine provider of the local lab: each machine
// is a lab/vm VM (systemd under systemd-nspawn in its own network
// namespace) with a /30 of its lab instance's range (10.213.0.0/16 for
// instance 0, see lab/instance) on its veth pair. It meets the same
// machine.Provider contract as the Multipass and SSH providers, so hostctl
// onboards a lab VM through the very code that onboards a real one.
package labmachine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/meshvm/meshvm/lab/instance"
	labvm "github.com/meshvm/meshvm/lab/vm"
	"github.com/meshvm/meshvm/pkg/host/filelock"
	"github.com/meshvm/meshvm/pkg/machine"
)

// Provider launches lab VMs below Dir.
type Provider struct {
	log *slog.Logger
	// Dir holds each VM's root filesystem, console log and slot record;
	// its parent is the lab's state directory, whose instance the VMs'
	// addresses and interface names derive from.
	dir string
	// CacheDir keeps the debootstrapped root filesystem between labs.
	cacheDir string

	// image, when set, is the root filesystem variant the VMs boot.
	image *Image

	mu sync.Mutex // guards slot allocation
}

// Image is a variant of the lab VM's root filesystem: extra Debian
// packages (a root filesystem cached apart) and Setup, run on each VM's
// root before every boot.
type Image struct {
	Packages []string
	Setup    func(name, root string) error
}

var _ machine.Provider = (*Provider)(nil)

// New returns a provider keeping VMs in dir and the root filesystem cache in cacheDir.
func New(log *slog.Logger, dir, cacheDir string) *Provider {
	return &Provider{log: log, dir: dir, cacheDir: cacheDir}
}

// WithImage makes the provider's VMs boot img.
func (p *Provider) WithImage(img Image) *Provider {
	p.image = &img
	return p
}

// slots are /30 networks: slot n has host .1 and VM .2 of 10.x.0.0/16 + 4n.
// The last /30 is not a VM's: the instance's istiod address is in it.
const maxSlots = 16383

// home is the lab state directory the VMs belong to.
func (p *Provider) home() string { return filepath.Dir(p.dir) }

// Instance is the lab instance the provider's VMs are in.
func (p *Provider) Instance() instance.Instance { return instance.Of(p.home()) }

type record struct {
	Slot int `json:"slot"`
}

func (p *Provider) recordPath(name string) string { return filepath.Join(p.dir, name+".json") }

// spec returns the VM's spec, allocating a slot on first use.
func (p *Provider) spec(name string, allocate bool) (labvm.Spec, error) {
	if len(name) > 10 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return labvm.Spec{}, fmt.Errorf("lab VM name %q: use at most 10 of a-z, 0-9 and '-' (it names a network interface)", name)
	}
	inst := p.Instance()
	p.mu.Lock()
	defer p.mu.Unlock()
	if allocate {
		// Claimed before the VMs' directory appears: a lab with VMs but no
		// instance predates instances.
		var err error
		if inst, err = instance.Claim(p.home()); err != nil {
			return labvm.Spec{}, err
		}
		unlock, err := p.lockSlots()
		if err != nil {
			return labvm.Spec{}, err
		}
		defer unlock()
	}
	var rec record
	data, err := os.ReadFile(p.recordPath(name))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &rec); err != nil {
			return labvm.Spec{}, fmt.Errorf("lab VM record %s: %w: delete the VM and launch it again", p.recordPath(name), err)
		}
	case errors.Is(err, fs.ErrNotExist) && allocate:
		if rec.Slot, err = p.freeSlot(); err != nil {
			return labvm.Spec{}, err
		}
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			return labvm.Spec{}, err
		}
		data, _ := json.Marshal(rec)
		if err := os.WriteFile(p.recordPath(name), data, 0o600); err != nil {
			return labvm.Spec{}, err
		}
	case errors.Is(err, fs.ErrNotExist):
		return labvm.Spec{}, fmt.Errorf("lab VM %s: %w", name, machine.ErrNotFound)
	default:
		return labvm.Spec{}, err
	}
	base := 4 * rec.Slot
	ip := func(host int) net.IP { return net.IPv4(10, inst.Octet(), byte((base+host)>>8), byte((base+host)&0xff)) }
	spec := labvm.Spec{Name: name, Dir: filepath.Join(p.dir, name), HostIP: ip(1), VMIP: ip(2), Tag: inst.Names()}
	if p.image != nil && p.image.Setup != nil {
		setup := p.image.Setup
		spec.Setup = func(root string) error { return setup(name, root) }
	}
	return spec, nil
}

// lockSlots holds a lock on the slot records across processes: launches
// by separate processes (a multipass stand-in per command) would otherwise
// take the same slot.
func (p *Provider) lockSlots() (unlock func(), err error) {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	return filelock.Hold(filepath.Join(p.dir, ".slots.lock"), 0o600, nil)
}

func (p *Provider) freeSlot() (int, error) {
	used := map[int]bool{}
	files, _ := filepath.Glob(filepath.Join(p.dir, "*.json"))
	for _, f := range files {
		var rec record
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &rec) == nil {
			used[rec.Slot] = true
		}
	}
	for n := 0; n < maxSlots; n++ {
		if !used[n] {
			return n, nil
		}
	}
	return 0, errors.New("every lab network slot is taken: delete lab VMs")
}

// Launch boots the VM, or returns it when it already runs.
func (p *Provider) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	spec, err := p.spec(s.Name, true)
	if err != nil {
		return machine.Machine{}, err
	}
	var extra []string
	if p.image != nil {
		extra = p.image.Packages
	}
	if spec.Rootfs, err = labvm.RootfsWith(ctx, p.log, p.cacheDir, extra...); err != nil {
		return machine.Machine{}, err
	}
	if _, err := labvm.Launch(ctx, p.log, spec); err != nil {
		return machine.Machine{}, err
	}
	return p.Info(ctx, s.Name)
}

// HostAddress is the host's end of the VM's link (its gateway); it
// changes when the VM moves to another slot.
func (p *Provider) HostAddress(name string) (string, error) {
	spec, err := p.spec(name, false)
	if err != nil {
		return "", err
	}
	return spec.HostIP.String(), nil
}

// IstiodAddress is where every VM of the lab reaches the lab's istiod: one
// address of the instance on the host, reached through each VM's default
// route, so it stays when a VM's own address changes.
func (p *Provider) IstiodAddress() string { return p.Instance().IstiodIP().String() }

// NetNS is the name of the VM's network namespace (under /run/netns).
func (p *Provider) NetNS(name string) (string, error) {
	spec, err := p.spec(name, false)
	if err != nil {
		return "", err
	}
	return labvm.NetNS(spec), nil
}

func (p *Provider) open(name string) (*labvm.VM, labvm.Spec, error) {
	spec, err := p.spec(name, false)
	if err != nil {
		return nil, spec, err
	}
	vm, ok := labvm.Open(p.log, spec)
	if !ok {
		return nil, spec, fmt.Errorf("lab VM %s is not running: run hostctl up (or hostctl vm start %s)", name, name)
	}
	return vm, spec, nil
}

// Info reports the VM; a stopped VM is reported with state Stopped.
func (p *Provider) Info(ctx context.Context, name string) (machine.Machine, error) {
	spec, err := p.spec(name, false)
	if err != nil {
		return machine.Machine{}, err
	}
	m := machine.Machine{Name: name, State: machine.Stopped, Addresses: []string{spec.VMIP.String()}, Arch: runtime.GOARCH}
	switch vm, ok := labvm.Open(p.log, spec); {
	case ok:
		m.State = machine.Running
	case vm != nil:
		m.State = machine.Starting
	}
	return m, nil
}

// List reports every lab VM.
func (p *Provider) List(ctx context.Context) ([]machine.Machine, error) {
	files, _ := filepath.Glob(filepath.Join(p.dir, "*.json"))
	sort.Strings(files)
	var out []machine.Machine
	for _, f := range files {
		m, err := p.Info(ctx, strings.TrimSuffix(filepath.Base(f), ".json"))
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Exec runs a command as root inside the VM.
func (p *Provider) Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error) {
	vm, _, err := p.open(name)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("exec: no command")
	}
	return vm.ExecInput(ctx, stdin, args[0], args[1:]...)
}

// Command returns the command running args as root inside the VM, for a
// caller that wires its streams and reads its exit code.
func (p *Provider) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	vm, _, err := p.open(name)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, errors.New("exec: no command")
	}
	return vm.Command(ctx, args[0], args[1:]...)
}

// Leader is the host PID of the running VM's systemd.
func (p *Provider) Leader(name string) (int, error) {
	vm, _, err := p.open(name)
	if err != nil {
		return 0, err
	}
	return vm.Leader(), nil
}

// Transfer writes data to path inside the VM atomically, as root.
func (p *Provider) Transfer(ctx context.Context, name, dst string, data io.Reader, mode os.FileMode) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("%s: transfer destination %q must be absolute", name, dst)
	}
	if _, err := p.Exec(ctx, name, data, "sh", "-c", machine.AtomicWriteScript(dst, mode)); err != nil {
		p.Exec(context.Background(), name, nil, "rm", "-f", machine.TempPath(dst))
		return fmt.Errorf("transfer to %s: %w", dst, err)
	}
	return nil
}

// Stop powers the VM off, keeping its disk.
func (p *Provider) Stop(ctx context.Context, name string) error {
	spec, err := p.spec(name, false)
	if err != nil {
		return err
	}
	vm, _ := labvm.Open(p.log, spec) // also one still booting
	if vm == nil {
		return nil // already stopped
	}
	return vm.Stop(ctx)
}

// Delete stops the VM and removes its disk and network slot.
func (p *Provider) Delete(ctx context.Context, name string) error {
	spec, err := p.spec(name, false)
	if errors.Is(err, machine.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	vm, _ := labvm.Open(p.log, spec)
	if vm == nil {
		vm = &labvm.VM{Spec: spec}
	}
	return errors.Join(vm.Remove(ctx), os.Remove(p.recordPath(name)))
}

// Renumber moves a stopped VM to a free network slot, so it boots with a new
// address: what a DHCP server may do to a Multipass VM across restarts, and
// the lab's way to exercise it.
func (p *Provider) Renumber(ctx context.Context, name string) error {
	if m, err := p.Info(ctx, name); err != nil {
		return err
	} else if m.Running() {
		return fmt.Errorf("lab VM %s is running: stop it before renumbering", name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	unlock, err := p.lockSlots()
	if err != nil {
		return err
	}
	defer unlock()
	slot, err := p.freeSlot()
	if err != nil {
		return err
	}
	data, _ := json.Marshal(record{Slot: slot})
	tmp := p.recordPath(name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.recordPath(name))
}

// Readdress moves the VM to a new address as a DHCP server may across a
// restart: it stops the VM, moves it to a free slot (a new /30) and boots
// it again, returning its new address. The old address is gone with the
// old link.
func (p *Provider) Readdress(ctx context.Context, name string) (string, error) {
	if err := p.Stop(ctx, name); err != nil {
		return "", err
	}
	if err := p.Renumber(ctx, name); err != nil {
		return "", err
	}
	m, err := p.Launch(ctx, machine.Spec{Name: name})
	if err != nil {
		return "", err
	}
	return m.Addresses[0], nil
}
