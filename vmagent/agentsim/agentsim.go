// Package agentsim runs a fleet of simulated VMs in one process, for scale
// benchmarks: each VM is the real agent (its handlers, guard and limits,
// mutual TLS from one agent CA) on its own loopback address at the agent's
// port, over its own sandbox root where files are delivered for real. What
// a fleet cannot run is stood in for: systemd (each VM's istio.service is a
// state moved as systemd moves it, and the harness can stop, crash or fail
// it) and the app (an HTTP listener on the VM's address the harness can
// stop). Hundreds of real vmagent processes do not fit in memory; these do.
//
// Linux only in practice: every 127.0.0.0/8 address is local there.
package agentsim

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/pkg/mtls"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/inproc"
)

// Options shape a fleet.
type Options struct {
	// N is how many VMs.
	N int
	// Dir holds each VM's sandbox root, Dir/<name>.
	Dir string
	// First is the first VM's address (default 127.1.0.1); the next take
	// the following addresses, skipping .0 and .255.
	First netip.Addr
	// Name names VM i (default vm0000, vm0001, ...).
	Name func(i int) string
	// Identity is the certificate VM name's agent presents at addr and the
	// CA it pins its callers to, as the workstation installs it.
	Identity func(name, addr string) (cert, key, clientCA []byte, err error)
	// AppPort, when set, is where each VM's app answers HTTP on its address.
	AppPort int
	// Limits default to the agent's.
	Limits *config.Limits
	// OnSidecar, when set, hears each change of a VM's unit (from the agent's
	// calls or the harness), after it happened.
	OnSidecar func(vm *VM, u Unit)
	// Log receives the agents' logs (default: discarded).
	Log *slog.Logger
}

// Fleet is running simulated VMs.
type Fleet struct {
	VMs []*VM
}

// VM is one simulated VM.
type VM struct {
	Name, Address string
	// Root is the sandbox the agent treats as /.
	Root string

	unit  *unit
	agent *inproc.Agent
	app   *app
}

// Start starts n VMs; on error the ones started are stopped.
func Start(o Options) (*Fleet, error) {
	if o.N <= 0 {
		return nil, fmt.Errorf("agentsim: N is %d: want at least one VM", o.N)
	}
	if o.Identity == nil {
		return nil, errors.New("agentsim: no Identity: give each agent its certificate and the CA of its callers")
	}
	if !o.First.IsValid() {
		o.First = netip.MustParseAddr("127.1.0.1")
	}
	if !o.First.Is4() || !o.First.IsLoopback() {
		return nil, fmt.Errorf("agentsim: first address %s: want an IPv4 loopback address (127.0.0.0/8)", o.First)
	}
	if o.Name == nil {
		o.Name = func(i int) string { return fmt.Sprintf("vm%04d", i) }
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	limits := config.Default().Limits
	if o.Limits != nil {
		limits = *o.Limits
	}
	f := &Fleet{}
	addr := o.First
	for i := range o.N {
		for b := addr.As4(); b[3] == 0 || b[3] == 255; b = addr.As4() {
			addr = addr.Next()
		}
		if !addr.IsLoopback() {
			f.Close()
			return nil, fmt.Errorf("agentsim: %d VMs from %s run past 127.255.255.254: start lower", o.N, o.First)
		}
		vm, err := startVM(o, limits, o.Name(i), addr.String())
		if err != nil {
			f.Close()
			return nil, err
		}
		f.VMs = append(f.VMs, vm)
		addr = addr.Next()
	}
	return f, nil
}

func startVM(o Options, limits config.Limits, name, addr string) (*VM, error) {
	vm := &VM{Name: name, Address: addr, Root: filepath.Join(o.Dir, name)}
	if err := inproc.Sandbox(vm.Root); err != nil {
		return nil, fmt.Errorf("agentsim: %s: %w", name, err)
	}
	var onChange func(Unit)
	if o.OnSidecar != nil {
		onChange = func(u Unit) { o.OnSidecar(vm, u) }
	}
	vm.unit = newUnit(vm.Root, onChange)
	cert, key, ca, err := o.Identity(name, addr)
	if err != nil {
		return nil, fmt.Errorf("agentsim: %s's identity: %w", name, err)
	}
	tlsCfg, err := mtls.ServerConfig(cert, key, ca)
	if err != nil {
		return nil, fmt.Errorf("agentsim: %s: %w", name, err)
	}
	vm.agent, err = inproc.New(inproc.Config{Root: vm.Root, TLS: tlsCfg, Limits: limits, Sidecar: manager{vm.unit},
		Addresses: func() []string { return []string{addr} }, Log: o.Log.With("vm", name)})
	if err != nil {
		return nil, fmt.Errorf("agentsim: %s: %w", name, err)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(agentspec.Port)))
	if err != nil {
		return nil, fmt.Errorf("agentsim: %s: %w (every 127.0.0.0/8 address is local on Linux only)", name, err)
	}
	go vm.agent.Serve(lis)
	if o.AppPort > 0 {
		vm.app = &app{addr: net.JoinHostPort(addr, strconv.Itoa(o.AppPort))}
		if err := vm.app.start(); err != nil {
			vm.agent.GRPC.Stop()
			return nil, fmt.Errorf("agentsim: %s's app: %w", name, err)
		}
	}
	return vm, nil
}

// Close stops every VM's agent and app.
func (f *Fleet) Close() {
	var wg sync.WaitGroup
	for _, vm := range f.VMs {
		wg.Add(1)
		go func() { defer wg.Done(); vm.stop() }()
	}
	wg.Wait()
}

func (vm *VM) stop() {
	vm.agent.GRPC.Stop()
	if vm.app != nil {
		vm.app.stop()
	}
}

// Sidecar is the VM's istio.service now.
func (vm *VM) Sidecar() Unit { return vm.unit.state() }

// StopSidecar stops the unit, as `systemctl stop istio` on the VM.
func (vm *VM) StopSidecar() (Unit, error) { return vm.unit.stop() }

// StartSidecar starts it, as `systemctl start istio`.
func (vm *VM) StartSidecar() (Unit, error) { return vm.unit.start("start", false) }

// CrashSidecar kills the unit's main process: systemd restarts it
// (Restart=always), counting the restart.
func (vm *VM) CrashSidecar() (Unit, error) { return vm.unit.crash() }

// FailSidecar leaves the unit failed, as after start-limit-hit.
func (vm *VM) FailSidecar() (Unit, error) { return vm.unit.fail() }

// BreakSidecar makes every later start or restart of the unit fail, as
// when pilot-agent cannot run: the unit is left failed, the job reports
// the error. Nothing undoes it.
func (vm *VM) BreakSidecar() { vm.unit.breakStart() }

// StopApp closes the app's listener: probes are refused.
func (vm *VM) StopApp() {
	if vm.app != nil {
		vm.app.stop()
	}
}

// StartApp opens it again.
func (vm *VM) StartApp() error {
	if vm.app == nil {
		return fmt.Errorf("%s has no app: start the fleet with an AppPort", vm.Name)
	}
	return vm.app.start()
}

// ReadFile reads a file delivered into the VM, by its path on the VM: links
// resolve inside the VM's root (its /etc/istio links to /var/lib/istio).
func (vm *VM) ReadFile(path string) ([]byte, error) {
	root, err := fsroot.New(vm.Root)
	if err != nil {
		return nil, err
	}
	return root.ReadFile(path)
}

// app is the VM's app: 200 on every path while it runs.
type app struct {
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

func (a *app) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		return nil
	}
	lis, err := net.Listen("tcp", a.addr)
	if err != nil {
		return err
	}
	a.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})}
	go a.srv.Serve(lis)
	return nil
}

func (a *app) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		a.srv.Close()
		a.srv = nil
	}
}

// ClientTLS is a caller's side of mTLS to VM vm's agent (hostctl's or the
// controller's), with a client certificate of ca.
func ClientTLS(ca *mtls.CA, vm *VM) (*tls.Config, error) {
	cert, key, err := ca.IssueClient("agentsim-caller", time.Hour)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(cert, key, ca.CertPEM(), vm.Address)
}
