// Package fleet is what hostctl does to a site, apart from the terminal: it
// converges the cluster, Istio, the workload and each VM to the config (up,
// vm onboard, vm upgrade, down) and gathers what they report (vm status,
// doctor, verify). hostctl/internal/cli parses flags, prints progress and results,
// and maps errors to exit codes; anything else could drive the same steps.
package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/machine/multipass"
	"github.com/meshvm/meshvm/pkg/machine/ssh"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// Site is where the mesh and its VMs live: the lab on this machine, or a
// real cluster with Multipass or SSH VMs. up, vm, status, doctor, verify and
// down run the same steps on every site; only what is here differs.
type Site interface {
	// Machines is the VMs' provider.
	Machines() machine.Provider
	// Kubeconfig is the cluster's admin kubeconfig.
	Kubeconfig() string
	// UpCluster brings the cluster up, or finds it, and says which.
	UpCluster(ctx context.Context, p Reporter) error
	// InstallIstio installs (or converges) Istio and waits until VMs can reach istiod.
	InstallIstio(ctx context.Context, p Reporter) error
	// Istio is the rendered install and what of it this site applies.
	Istio() ([]istioinstall.Object, istioinstall.Keep, error)
	// EastWest is the east-west gateway's state ("ready" or "not run" are
	// good) and detail.
	EastWest(ctx context.Context) (string, string)
	// IstiodReady says whether the revision's istiod serves, and describes it.
	IstiodReady(ctx context.Context, rev string) (string, error)
	// Revision is the Istio revision new VMs join: istio.revision, or the
	// joined Istio's ("" is the default).
	Revision(ctx context.Context) string
	// IstiodVersion asks the revision's running istiod its version (not the
	// config's), and says where the answer came from.
	IstiodVersion(ctx context.Context, rev string) (version, from string, err error)
	// RevisionOf is the revision of the istiod instance (pod) that
	// registered a WorkloadEntry, "" when the site cannot tell.
	RevisionOf(ctx context.Context, controller string) string
	// JoinedIstio describes the Istio of yours the VMs join; "" when the
	// Istio is meshvm's (or there is none).
	JoinedIstio(ctx context.Context) string
	// ClusterID is the cluster's name in the mesh (the VMs' cluster.env).
	ClusterID(ctx context.Context) string
	// IstiodAddress is where the VM reaches istiod (its hosts block names it).
	IstiodAddress(ctx context.Context, vm string) (string, error)
	// Sidecar is the sidecar's files of an Istio version for a VM architecture.
	Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error)
	// DownCluster removes the cluster, or what up installed in one it did
	// not create; vmsGone says the VMs were deleted first.
	DownCluster(ctx context.Context, p Reporter, vmsGone bool) error
	// TrafficUncheckable says why mesh traffic cannot be checked here, if it cannot.
	TrafficUncheckable() string
	// Processes are the cluster's processes hostctl runs itself, for
	// ClusterStatus; none when the cluster is not hostctl's lab.
	Processes() []Component
}

// Fleet is a config's VMs on the site it names, with what every step
// starts from.
type Fleet struct {
	Config config.Config
	State  *statedir.Dir
	Site   Site
	// Agent is the static vmagent binary for a VM architecture.
	Agent func(arch string) ([]byte, error)
}

// Open is the fleet of the config, starting nothing: agent gives the vmagent
// binaries it installs, p is told what a Multipass launch waits for.
func Open(ctx context.Context, cfg config.Config, state *statedir.Dir, agent func(arch string) ([]byte, error), p Reporter) (*Fleet, error) {
	s, err := openSite(ctx, cfg, state, p)
	if err != nil {
		return nil, err
	}
	return &Fleet{Config: cfg, State: state, Site: s, Agent: agent}, nil
}

// openSite is the site the config names.
func openSite(ctx context.Context, cfg config.Config, state *statedir.Dir, p Reporter) (Site, error) {
	ms := machinesFor(cfg, state, p)
	v := cfg.Istio.Version
	if cfg.Cluster.Provider == config.Lab {
		if v != "" && v != istioinstall.EmbeddedVersion {
			return nil, fmt.Errorf("istio.version %s: the lab builds istiod and pilot-agent %s from source and no other version: leave istio.version empty", v, istioinstall.EmbeddedVersion)
		}
		return newLabSite(cfg, state, labMachines(state)), nil
	}
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
func machinesFor(cfg config.Config, state *statedir.Dir, p Reporter) machine.Provider {
	switch cfg.MachineProvider() {
	case config.Lab:
		return labMachines(state)
	case config.SSH:
		hosts := map[string]ssh.Host{}
		for _, vm := range cfg.VMs {
			hosts[vm.Name] = ssh.Host{Address: vm.Address, User: vm.User, KeyFile: vm.Key}
		}
		return ssh.New(hosts, state.Path("known_hosts"))
	}
	return multipassProvider(p)
}

// labMachines is the lab's machine provider, its VMs under the state dir.
func labMachines(state *statedir.Dir) *labmachine.Provider {
	return labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), state.Path("lab", "vms"), build.DefaultCacheDir())
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
