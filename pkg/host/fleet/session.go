package fleet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// session is a site whose cluster and Istio are up, with what every per-VM
// step needs.
type session struct {
	cfg     config.Config
	state   *statedir.Dir
	site    Site
	clients workload.Clients
	spec    workload.Spec
	deps    onboard.Deps
	p       Reporter

	// store is the state directory as the per-VM core sees it.
	store vmcore.DirStore
	// targets finds what the VMs join once for all the VMs onboarding at
	// once: the running istiods' versions by revision (an API round trip
	// or two each), the sidecar files by architecture and version (a
	// module lookup or a registry request).
	targets *vmcore.Targets
}

// start converges the site's cluster, Istio and the workload's objects.
func start(ctx context.Context, p Reporter, f *Fleet) (*session, error) {
	s := f.Site
	if err := s.UpCluster(ctx, p); err != nil {
		return nil, err
	}
	if err := s.InstallIstio(ctx, p); err != nil {
		return nil, err
	}
	return workloadSession(ctx, p, f)
}

// attach is start for re-onboarding: the mesh must be up already, and only
// the workload's objects are converged. Re-applying Istio would cost
// seconds and is up's job.
func attach(ctx context.Context, p Reporter, f *Fleet) (*session, error) {
	s := f.Site
	detail, err := s.IstiodReady(ctx, s.Revision(ctx))
	if err != nil {
		return nil, fmt.Errorf("istiod is not ready (%w): run hostctl up", err)
	}
	p.Step("control plane", "", "istiod %s", detail)
	return workloadSession(ctx, p, f)
}

// workloadSession converges the workload's objects and opens the session.
func workloadSession(ctx context.Context, p Reporter, f *Fleet) (*session, error) {
	cfg, state, s := f.Config, f.State, f.Site
	clients, err := KubeClients(s.Kubeconfig())
	if err != nil {
		return nil, err
	}
	spec := WorkloadSpec(cfg)
	spec.Revision = groupRevision(cfg, state, s.Revision(ctx))
	changes, err := workload.Ensure(ctx, clients, spec)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		p.Step("workload", "", "%s %s", ch.Object, ch.Action)
	}
	var names []string
	for _, vm := range cfg.VMs {
		names = append(names, vm.Name)
	}
	return &session{
		cfg: cfg, state: state, site: s, clients: clients, spec: spec, p: p,
		deps:    onboard.Deps{Provider: s.Machines(), State: state, AgentBinary: f.Agent},
		store:   vmcore.DirStore{Dir: state, VMs: names},
		targets: vmcore.NewTargets(s, istioinstall.Namespace, formcache.New(state.Path("sidecar", "zstd"))),
	}, nil
}

// eachVM runs fn for every VM, at most parallel at once (config's
// parallel), in the order listed; one failing is reported by name and does
// not stop the others. The errors come in the VMs' order.
func eachVM(parallel int, vms []config.VM, fn func(config.VM) error) error {
	errs := make([]error, len(vms))
	bounded(parallel, len(vms), func(i int) {
		if err := fn(vms[i]); err != nil {
			errs[i] = fmt.Errorf("%s: %w", vms[i].Name, err)
		}
	})
	return errors.Join(errs...)
}

// bounded calls fn(0) to fn(n-1) on at most parallel goroutines (the
// default when parallel is unset), each taking the next index, and returns
// when all have returned.
func bounded(parallel, n int, fn func(i int)) {
	if parallel < 1 {
		parallel = config.DefaultParallel
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(parallel, n) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// provision boots the VM (or finds it running), converges its app and installs or
// updates the agent, returning a client connected to it.
func (r *session) provision(ctx context.Context, name string) (machine.Machine, *agentclient.Client, error) {
	vm, err := r.cfg.VM(name)
	if err != nil {
		return machine.Machine{}, nil, err
	}
	m, err := r.site.Machines().Launch(ctx, machine.Spec{Name: name, Image: vm.Image, CPUs: vm.CPUs, Memory: vm.Memory, Disk: vm.Disk})
	if err != nil {
		return m, nil, err
	}
	r.p.Step("machine", name, "%s at %s", m.State.Lower(), m.Address())
	if err := r.convergeApp(ctx, vm); err != nil {
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
	r.p.Step("agent", name, "vmagent %s answering on %s:%s", v.GetVersion(), m.Address(), onboard.AgentPort)
	return m, c, nil
}

// running returns a VM that must already run, and its connected agent: the
// per-VM commands other than up and add never create or reinstall anything.
func (r *session) running(ctx context.Context, name string) (machine.Machine, *agentclient.Client, error) {
	m, err := r.site.Machines().Info(ctx, name)
	if errors.Is(err, machine.ErrNotFound) {
		return m, nil, fmt.Errorf("no VM %s: run hostctl up (or hostctl vm add %s) to create it", name, name)
	}
	if err != nil {
		return m, nil, err
	}
	if !m.Running() {
		return m, nil, fmt.Errorf("VM %s is %s: run hostctl vm start %s", name, m.State.Lower(), name)
	}
	c, err := onboard.Connect(ctx, r.state, m)
	return m, c, err
}

// onboard generates the workload files (reusing a still-valid token unless
// fresh), delivers what differs through the agent, restarts the sidecar when
// it needs it (or restart is set), waits for the VM's WorkloadEntry to be
// Healthy (registered, when the app is the user's), and removes the one it
// left at an old address.
func (r *session) onboard(ctx context.Context, name string, m machine.Machine, c *agentclient.Client, fresh, restart bool) error {
	rev := r.vmRevision(ctx, name)
	if want := r.site.Revision(ctx); !sameRevision(rev, want) {
		r.p.Step("onboard", name, "stays on revision %s (the VMs join %s): hostctl vm upgrade %s --revision %s moves it",
			revisionName(rev), revisionName(want), name, revisionName(want))
	}
	_, err := r.onboardOnto(ctx, name, m, c, fresh, restart, rev)
	return err
}

// vmRevision is the revision the VM is on: its record's; a VM onboarded
// before meshvm kept one is on the default; a new one joins the site's.
func (r *session) vmRevision(ctx context.Context, name string) string {
	return vmRevision(r.state, name, r.site.Revision(ctx))
}

// onboardOnto is onboard onto revision rev, with the proxy of the version
// that revision's running istiod reports (never newer than it); it returns
// the VM's WorkloadEntry once Healthy.
func (r *session) onboardOnto(ctx context.Context, name string, m machine.Machine, c *agentclient.Client, fresh, restart bool, rev string) (workload.Entry, error) {
	istiodIP, err := r.site.IstiodAddress(ctx, name)
	if err != nil {
		return workload.Entry{}, err
	}
	target := r.targets.Snapshot(ctx)
	version, err := target.IstiodVersion(ctx, rev)
	if err != nil {
		return workload.Entry{}, err
	}
	side, err := target.Sidecar(ctx, m.Arch, version)
	if err != nil {
		return workload.Entry{}, err
	}
	r.p.Step("onboard", name, "revision %s, Istio %s (its istiod's)", revisionName(rev), version)
	addr := m.Address()
	var lastToken []byte
	if !fresh {
		lastToken, _ = r.state.ReadFile(filepath.Join("vms", name, "files", "istio-token"))
	}
	files, err := workload.Files(ctx, r.clients, r.spec, workload.FilesFor{ClusterID: r.site.ClusterID(ctx),
		VMIP: addr, IstiodIP: istiodIP, VM: name, TokenLifetime: r.cfg.Workload.TokenLifetime.Duration, ReuseToken: lastToken,
		Warn: func(msg string) { r.p.Step("onboard", name, "%s", msg) }, Revision: rev})
	if err != nil {
		return workload.Entry{}, err
	}
	if err := saveFiles(r.state, name, files); err != nil {
		return workload.Entry{}, err
	}
	prev, _, err := workload.FindEntry(ctx, r.clients, r.spec, addr)
	if err != nil {
		return workload.Entry{}, err
	}
	rep, err := onboard.Onboard(ctx, c, files, side, onboard.Hosts{
		IstiodIP: istiodIP, IstiodName: workloadfiles.IstiodHost(istioinstall.Namespace, rev), VMIP: addr, VMName: name}, restart)
	if err != nil {
		return workload.Entry{}, err
	}
	// The files now point at rev, whether or not the VM comes back Healthy:
	// a rollback is a move back from it.
	if err := recordJoined(r.state, name, joined{Revision: rev, Istio: version}); err != nil {
		return workload.Entry{}, err
	}
	sent := "nothing sent"
	if len(rep.Sent) > 0 {
		sent = "sent " + strings.Join(rep.Sent, ", ")
	}
	sidecarState := "sidecar " + rep.Sidecar.GetActiveState()
	if rep.Restarted {
		sidecarState += " (restarted)"
	}
	r.p.Step("onboard", name, "%s; %d file(s) already in place; %s", sent, len(rep.Skipped), sidecarState)
	if !rep.Restarted {
		prev = workload.Entry{}
	}
	vm, err := r.cfg.VM(name)
	if err != nil {
		return workload.Entry{}, err
	}
	e, detail, err := waitOnboarded(ctx, r.cfg, r.clients, vm, addr, 2*time.Minute, prev)
	if err != nil {
		return e, err
	}
	r.p.Step("healthy", name, "%s", detail)
	return e, r.moved(ctx, name, addr)
}

// onboardedAddress is the address the VM was last onboarded at ("" when
// never): its WorkloadEntry is there.
func onboardedAddress(state *statedir.Dir, name string) string {
	b, _ := state.ReadFile(addressFile(name))
	return string(b)
}

func addressFile(vm string) string { return filepath.Join("vms", vm, "address") }

// entryAddress is where the VM's WorkloadEntry is: its address, or the one it
// was onboarded at when it reports none (a stopped Multipass instance).
func entryAddress(state *statedir.Dir, m machine.Machine) string {
	if a := m.Address(); a != "" {
		return a
	}
	return onboardedAddress(state, m.Name)
}

// moved records the VM's address and deletes the WorkloadEntry left at the
// previous one, unless another VM of ours now holds that address.
func (r *session) moved(ctx context.Context, name, addr string) error {
	if old := onboardedAddress(r.state, name); old != "" && old != addr && !r.addressInUse(name, old) {
		gone, err := workload.DeleteEntry(ctx, r.clients, r.spec, old)
		if err != nil {
			return err
		}
		if gone != "" {
			r.p.Step("healthy", name, "address changed from %s: stale WorkloadEntry %s deleted", old, gone)
		}
	}
	return r.state.WriteSecret(addressFile(name), []byte(addr))
}

func (r *session) addressInUse(self, addr string) bool {
	for _, vm := range r.cfg.VMs {
		if vm.Name == self {
			continue
		}
		if onboardedAddress(r.state, vm.Name) == addr {
			return true
		}
	}
	return false
}
