package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/agentclient"
	"github.com/meshvm/meshvm/pkg/istioinstall"
	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labmachine"
	"github.com/meshvm/meshvm/pkg/labstack"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/onboard"
	"github.com/meshvm/meshvm/pkg/statedir"
	"github.com/meshvm/meshvm/pkg/workload"
	"github.com/meshvm/meshvm/pkg/workloadfiles"
)

// labRun is a lab control plane that is up, with what every per-VM step needs.
type labRun struct {
	cfg     config.Config
	state   *statedir.Dir
	lab     *labmachine.Provider
	clients workload.Clients
	spec    workload.Spec
	side    onboard.Sidecar
	deps    onboard.Deps
	p       *progress
}

// startLab converges the lab's control plane and the workload's objects.
func startLab(ctx context.Context, p *progress, cfg config.Config) (*labRun, error) {
	src, err := labSource()
	if err != nil {
		return nil, err
	}
	if v := cfg.Istio.Version; v != "" && v != istioinstall.EmbeddedVersion {
		return nil, fmt.Errorf("istio.version %s: this hostctl installs Istio %s from the charts it embeds; installing another version through an istioctl of that version is not built yet: leave istio.version empty", v, istioinstall.EmbeddedVersion)
	}
	state, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	p.step("control plane", "", "building (cached after the first run) and starting")
	st, err := labstack.Up(ctx, stackConfig(cfg, src, state, lineWriter{p, "control plane"}))
	if err != nil {
		return nil, err
	}
	clients, err := kubeClients(st.Kubeconfig)
	if err != nil {
		return nil, err
	}
	spec := workloadSpec(cfg)
	changes, err := workload.Ensure(ctx, clients, spec)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		p.step("workload", "", "%s %s", ch.Object, ch.Action)
	}
	bootstrap, err := labbuild.IstioFile(ctx, src, "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		return nil, err
	}
	lab := labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), state.Path("lab", "vms"), cacheDir())
	return &labRun{
		cfg: cfg, state: state, lab: lab, clients: clients, spec: spec, p: p,
		side: onboard.Sidecar{PilotAgent: st.Bins.Path("pilot-agent"), Envoy: st.Bins.Path("lab-envoy"), BootstrapTemplate: bootstrap},
		deps: onboard.Deps{Provider: lab, State: state, AgentBinary: agentBinary(src)},
	}, nil
}

// stackConfig is the lab control plane's configuration.
func stackConfig(cfg config.Config, src string, state *statedir.Dir, progress io.Writer) labstack.Config {
	return labstack.Config{ModuleDir: src, CacheDir: cacheDir(), Dir: state.Path("lab"), Istio: istioOptions(cfg), Progress: progress}
}

// istioOptions are the install's inputs from the config.
func istioOptions(cfg config.Config) istioinstall.Options {
	return istioinstall.Options{MeshID: cfg.Istio.MeshID, ClusterName: cfg.Istio.ClusterName, Network: cfg.Istio.Network}
}

// eachVM runs fn for every VM concurrently; one failing is reported by name
// and does not stop the others.
func eachVM(vms []config.VM, fn func(config.VM) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(vms))
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(vm); err != nil {
				errs[i] = fmt.Errorf("%s: %w", vm.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// provision boots the VM (or finds it running), runs its app and installs or
// updates the agent, returning a client connected to it.
func (r *labRun) provision(ctx context.Context, name string) (machine.Machine, *agentclient.Client, error) {
	m, err := r.lab.Launch(ctx, machine.Spec{Name: name})
	if err != nil {
		return m, nil, err
	}
	r.p.step("machine", name, "%s at %s", strings.ToLower(m.State), m.Addresses[0])
	if err := labApp(ctx, r.lab, name, r.cfg.Workload.Port); err != nil {
		return m, nil, err
	}
	c, err := onboard.InstallAgent(ctx, r.deps, m)
	if err != nil {
		return m, nil, err
	}
	v, err := c.Version(ctx)
	if err != nil {
		c.Close()
		return m, nil, err
	}
	r.p.step("agent", name, "vmagent %s answering on %s:%s", v.GetVersion(), m.Addresses[0], onboard.AgentPort)
	return m, c, nil
}

// running returns a VM that must already run, and its connected agent: the
// per-VM commands other than up and add never create or reinstall anything.
func (r *labRun) running(ctx context.Context, name string) (machine.Machine, *agentclient.Client, error) {
	m, err := r.lab.Info(ctx, name)
	if errors.Is(err, machine.ErrNotFound) {
		return m, nil, fmt.Errorf("no lab VM %s: run hostctl up (or hostctl vm add %s) to create it", name, name)
	}
	if err != nil {
		return m, nil, err
	}
	if m.State != "Running" {
		return m, nil, fmt.Errorf("VM %s is %s: run hostctl vm start %s", name, strings.ToLower(m.State), name)
	}
	c, err := onboard.Connect(ctx, r.state, m)
	return m, c, err
}

// onboard generates the workload files (reusing a still-valid token unless
// fresh), delivers what differs through the agent, restarts the sidecar when
// it needs it (or restart is set), waits for the VM's WorkloadEntry to be
// Healthy, and removes the one it left at an old address.
func (r *labRun) onboard(ctx context.Context, name string, m machine.Machine, c *agentclient.Client, fresh, restart bool) error {
	hostIP, err := r.lab.HostAddress(name)
	if err != nil {
		return err
	}
	addr := m.Addresses[0]
	var lastToken []byte
	if !fresh {
		lastToken, _ = r.state.ReadFile(filepath.Join("vms", name, "files", "istio-token"))
	}
	files, err := workload.Files(ctx, r.clients, r.spec, workload.FilesFor{ClusterID: r.cfg.Istio.ClusterName,
		VMIP: addr, IstiodIP: hostIP, TokenLifetime: r.cfg.Workload.TokenLifetime.Duration, ReuseToken: lastToken})
	if err != nil {
		return err
	}
	if err := saveFiles(r.state, name, files); err != nil {
		return err
	}
	prev, _, err := workload.FindEntry(ctx, r.clients, r.spec, addr)
	if err != nil {
		return err
	}
	rep, err := onboard.Onboard(ctx, c, files, r.side, onboard.Hosts{
		IstiodIP: hostIP, IstiodName: workloadfiles.IstiodHost("istio-system", ""), VMIP: addr, VMName: name}, restart)
	if err != nil {
		return err
	}
	sent := "nothing sent"
	if len(rep.Sent) > 0 {
		sent = "sent " + strings.Join(rep.Sent, ", ")
	}
	side := "sidecar " + rep.Sidecar.GetActiveState()
	if rep.Restarted {
		side += " (restarted)"
	}
	r.p.step("onboard", name, "%s; %d file(s) already in place; %s", sent, len(rep.Skipped), side)
	if !rep.Restarted {
		prev = workload.Entry{}
	}
	e, err := workload.WaitHealthy(ctx, r.clients, r.spec, addr, 2*time.Minute, prev)
	if err != nil {
		return err
	}
	r.p.step("healthy", name, "WorkloadEntry %s Healthy", e.Name)
	return r.moved(ctx, name, addr)
}

// moved records the VM's address and deletes the WorkloadEntry left at the
// previous one, unless another VM of ours now holds that address.
func (r *labRun) moved(ctx context.Context, name, addr string) error {
	rel := filepath.Join("vms", name, "address")
	prev, _ := r.state.ReadFile(rel)
	if old := string(prev); old != "" && old != addr && !r.addressInUse(name, old) {
		gone, err := workload.DeleteEntry(ctx, r.clients, r.spec, old)
		if err != nil {
			return err
		}
		if gone != "" {
			r.p.step("healthy", name, "address changed from %s: stale WorkloadEntry %s deleted", old, gone)
		}
	}
	return r.state.WriteSecret(rel, []byte(addr))
}

func (r *labRun) addressInUse(self, addr string) bool {
	for _, vm := range r.cfg.VMs {
		if vm.Name == self {
			continue
		}
		if b, _ := r.state.ReadFile(filepath.Join("vms", vm.Name, "address")); string(b) == addr {
			return true
		}
	}
	return false
}
