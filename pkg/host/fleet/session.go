package fleet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// session is a site whose cluster and Istio are up, with what every per-VM
// step needs.
type session struct {
	cfg   config.Config
	state *statedir.Dir
	// machines are the VMs', mesh what they join.
	machines machine.Provider
	mesh     vmcore.Mesh
	clients  workload.Clients
	spec     workload.Spec
	// agentBinary is the static vmagent for a VM architecture.
	agentBinary func(arch string) ([]byte, error)
	p           Reporter

	// store is what the per-VM core keeps between passes: the state
	// directory, or in fleet mode the cluster's store.
	store vmcore.Store
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
		return nil, reason.Wrap(fmt.Errorf("istiod is not ready (%w)", err), reason.IstiodNotReady)
	}
	p.Step(progress.ControlPlane, "", "istiod %s", detail)
	return workloadSession(ctx, p, f)
}

// workloadSession converges the workload's objects and opens the session.
func workloadSession(ctx context.Context, p Reporter, f *Fleet) (*session, error) {
	r, err := observe(p, f)
	if err != nil {
		return nil, err
	}
	// The revisions the VMs joined: fleet mode's records are the
	// cluster's (vm upgrade moves VMs there), once it has some.
	var joined vmcore.Store = vmcore.DirStore{Dir: r.state}
	if f.Records != nil {
		joined = f.Records
	}
	r.spec.Revision = groupRevision(r.cfg, joined, f.Site.Revision(ctx))
	changes, err := workload.Ensure(ctx, r.clients, r.spec)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		p.Step(progress.Workload, "", "%s %s", ch.Object, ch.Action)
	}
	return r, nil
}

// observe opens a session on the site as it is, converging nothing: for
// the commands that only power VMs on or rotate their tokens.
func observe(p Reporter, f *Fleet) (*session, error) {
	cfg, state, s := f.Config, f.State, f.Site
	clients, err := KubeClients(s.Kubeconfig())
	if err != nil {
		return nil, err
	}
	var names []string
	for _, vm := range cfg.VMs {
		names = append(names, vm.Name)
	}
	return &session{
		cfg: cfg, state: state, machines: s.Machines(), mesh: s, clients: clients, spec: WorkloadSpec(cfg), p: p,
		agentBinary: f.Agent,
		store:       vmcore.DirStore{Dir: state, VMs: names},
		targets:     vmcore.NewTargets(s, istioinstall.Namespace, formcache.New(state.Path("sidecar", "zstd"))),
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
