// Package fleet is what hostctl does to a site, apart from the terminal: it
// converges the cluster, Istio, the workload and each VM to the config (up,
// vm onboard, vm upgrade, down) and gathers what they report (vm status,
// doctor, verify). hostctl/internal/cli parses flags, prints progress and results,
// and maps errors to exit codes; anything else could drive the same steps.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/multipass"
	"github.com/meshvm/meshvm/pkg/machine/ssh"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// Site is where the mesh and its VMs live: the lab on this machine, or a
// real cluster with Multipass or SSH VMs. up, vm, status, doctor, verify and
// down run the same steps on every site; only what is here differs. It is
// the parts below together: a caller takes the one it needs.
type Site interface {
	// Machines is the VMs' provider.
	Machines() machine.Provider
	// Kubeconfig is the cluster's admin kubeconfig.
	Kubeconfig() string
	ClusterLifecycle
	// Mesh is what a VM joins, as the per-VM core asks it.
	vmcore.Mesh
	MeshStatus
}

// ClusterLifecycle is the cluster and the Istio a site brings up and takes
// down: up, hostctl cluster and istio, and down drive it.
type ClusterLifecycle interface {
	// UpCluster brings the cluster up, or finds it, and says which.
	UpCluster(ctx context.Context, p Reporter) error
	// InstallIstio installs (or converges) Istio and waits until VMs can reach istiod.
	InstallIstio(ctx context.Context, p Reporter) error
	// Istio is the rendered install and what of it this site applies.
	Istio() ([]istioinstall.Object, istioinstall.Keep, error)
	// DownCluster removes the cluster, or what up installed in one it did
	// not create; vmsGone says the VMs were deleted first.
	DownCluster(ctx context.Context, p Reporter, vmsGone bool) error
	// Processes are the cluster's processes hostctl runs itself, for
	// ClusterStatus; none when the cluster is not hostctl's lab.
	Processes() []Component
}

// MeshStatus is what status, doctor, verify and upgrade read of the mesh
// beyond what a VM joins.
type MeshStatus interface {
	// IstiodReady says whether the revision's istiod serves, and describes it.
	IstiodReady(ctx context.Context, rev string) (string, error)
	// EastWest is the east-west gateway's state ("ready" or "not run" are
	// good) and detail.
	EastWest(ctx context.Context) (string, string)
	// JoinedIstio describes the Istio of yours the VMs join; "" when the
	// Istio is meshvm's (or there is none).
	JoinedIstio(ctx context.Context) string
	// RevisionOf is the revision of the istiod instance (pod) that
	// registered a WorkloadEntry, "" when the site cannot tell.
	RevisionOf(ctx context.Context, controller string) string
	// TrafficUncheckable says why mesh traffic cannot be checked here, if it cannot.
	TrafficUncheckable() string
}

// Lab is the lab, which fleet does not link (hostctl's CLI passes
// lab/site's): its site, and its machines, which may join a cluster of
// yours too. A zero Lab is a hostctl without the lab.
type Lab struct {
	// Site is the lab's site for the config.
	Site func(cfg config.Config, state *statedir.Dir) (Site, error)
	// Machines is the lab's machine provider, its VMs under the state dir.
	Machines func(state *statedir.Dir) machine.Provider
}

// Fleet is a config's VMs on the site it names, with what every step
// starts from.
type Fleet struct {
	Config config.Config
	State  *statedir.Dir
	Site   Site
	// Agent is the static vmagent binary for a VM architecture.
	Agent func(arch string) ([]byte, error)
	// Records is where status, verify, doctor and logs read the VMs'
	// records and the agent CA: nil is the state directory; in fleet mode
	// they are the cluster's (fleetmode.UseCluster sets them), so that a
	// workstation with no state of these VMs reaches their agents.
	Records vmcore.Store
}

// errRecordsUnread is a fleet-mode read made before the cluster's records
// were opened: the state directory's are not the VMs' (and reading them
// would mint an agent CA no agent pins).
var errRecordsUnread = errors.New("fleet mode: the VMs' records and the agent CA are in the cluster (Secrets in meshvm-system), which was not read")

// records is the store status, verify, doctor and logs read.
func (f *Fleet) records() (vmcore.Store, error) {
	switch {
	case f.Records != nil:
		return f.Records, nil
	case f.Config.FleetMode():
		return nil, errRecordsUnread
	}
	return vmcore.DirStore{Dir: f.State}, nil
}

// Open is the fleet of the config, starting nothing: agent gives the vmagent
// binaries it installs, p is told what a Multipass launch waits for, lab
// is the lab's site and machines where the config names them.
func Open(ctx context.Context, cfg config.Config, state *statedir.Dir, agent func(arch string) ([]byte, error), p Reporter, lab Lab) (*Fleet, error) {
	s, err := openSite(ctx, cfg, state, p, lab)
	if err != nil {
		return nil, err
	}
	return &Fleet{Config: cfg, State: state, Site: s, Agent: agent}, nil
}

// openSite is the site the config names.
func openSite(ctx context.Context, cfg config.Config, state *statedir.Dir, p Reporter, lab Lab) (Site, error) {
	if cfg.Cluster.Provider == config.Lab || cfg.MachineProvider() == config.Lab {
		if lab.Site == nil || lab.Machines == nil {
			return nil, errors.New("cluster.provider or machines is lab, but the lab is not part of this program (hostctl brings it): name a cluster and machines of yours")
		}
	}
	if cfg.Cluster.Provider == config.Lab {
		return lab.Site(cfg, state)
	}
	ms := machinesFor(cfg, state, p, lab)
	v := cfg.Istio.Version
	cs := &clusterSite{cfg: cfg, state: state, ms: ms, kc: cfg.Cluster.Kubeconfig, version: istioinstall.EmbeddedVersion}
	if v != "" && v != istioinstall.EmbeddedVersion {
		var err error
		if cs.istioctl, err = istioinstall.FindIstioctl(ctx, v); err != nil {
			return nil, err
		}
		cs.version = v
	}
	switch cfg.Cluster.Provider {
	case config.Multipass:
		if cfg.Cluster.Servers != 1 {
			return nil, fmt.Errorf("cluster.servers %d: hostctl provisions one k3s server (HA servers are not built): set it to 1", cfg.Cluster.Servers)
		}
		cs.kc, cs.k3s = state.Path("kubeconfig"), multipassProvider(p)
	case config.SSH:
		// k3s on the nodes you list.
		hosts := map[string]ssh.Host{}
		for _, n := range cfg.Cluster.Nodes {
			hosts[n.Name] = ssh.Host{Address: n.Address, User: n.User, KeyFile: n.Key}
		}
		cs.kc, cs.k3s = state.Path("kubeconfig"), ssh.New(hosts, state.Path("known_hosts"))
	}
	return cs, nil
}

// machinesFor is the provider of the config's VMs.
func machinesFor(cfg config.Config, state *statedir.Dir, p Reporter, lab Lab) machine.Provider {
	switch cfg.MachineProvider() {
	case config.Lab:
		return lab.Machines(state)
	case config.SSH:
		hosts := map[string]ssh.Host{}
		for _, vm := range cfg.VMs {
			hosts[vm.Name] = ssh.Host{Address: vm.Address, User: vm.User, KeyFile: vm.Key}
		}
		return ssh.New(hosts, state.Path("known_hosts"))
	}
	return multipassProvider(p)
}

// multipassProvider tells p what a launch waits for (an instance Starting,
// cloud-init), with the time since it began.
func multipassProvider(p Reporter) *multipass.Provider {
	start := time.Now()
	return &multipass.Provider{Progress: func(format string, args ...any) {
		p.Say("%s (%s)", fmt.Sprintf(format, args...), time.Since(start).Round(time.Second))
	}}
}

// Reporter is the progress channel: each step of long work as it happens,
// for one VM or for the site ("" vm), rendered by the CLI.
type Reporter = progress.Reporter
