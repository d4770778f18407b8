package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	labvm "github.com/meshvm/meshvm/pkg/lab/vm"
	"github.com/meshvm/meshvm/pkg/machine"
	labmachine "github.com/meshvm/meshvm/pkg/machine/lab"
	"github.com/meshvm/meshvm/pkg/machine/multipass"
	"github.com/meshvm/meshvm/pkg/machine/ssh"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// site is where the mesh and its VMs live: the lab on this machine, or a
// real cluster with Multipass or SSH VMs. up, vm, status, doctor, verify and
// down run the same steps on every site; only what is here differs.
type site interface {
	// machines is the VMs' provider.
	machines() machine.Provider
	// kubeconfig is the cluster's admin kubeconfig.
	kubeconfig() string
	// upCluster brings the cluster up, or finds it, and says which.
	upCluster(ctx context.Context, p *progress) error
	// installIstio installs (or converges) Istio and waits until VMs can reach istiod.
	installIstio(ctx context.Context, p *progress) error
	// istio is the rendered install and what of it this site applies.
	istio() ([]istioinstall.Object, istioinstall.Keep, error)
	// eastWest is the east-west gateway's state ("ready" or "not run" are
	// good) and detail.
	eastWest(ctx context.Context) (string, string)
	// istiodReady says whether the revision's istiod serves, and describes it.
	istiodReady(ctx context.Context, rev string) (string, error)
	// revision is the Istio revision new VMs join: istio.revision, or the
	// joined Istio's ("" is the default).
	revision(ctx context.Context) string
	// istiodVersion asks the revision's running istiod its version (not the
	// config's), and says where the answer came from.
	istiodVersion(ctx context.Context, rev string) (version, from string, err error)
	// revisionOf is the revision of the istiod instance (pod) that
	// registered a WorkloadEntry, "" when the site cannot tell.
	revisionOf(ctx context.Context, controller string) string
	// joinedIstio describes the Istio of yours the VMs join; "" when the
	// Istio is meshvm's (or there is none).
	joinedIstio(ctx context.Context) string
	// clusterID is the cluster's name in the mesh (the VMs' cluster.env).
	clusterID(ctx context.Context) string
	// istiodAddress is where the VM reaches istiod (its hosts block names it).
	istiodAddress(ctx context.Context, vm string) (string, error)
	// sidecar is the sidecar's files of an Istio version for a VM architecture.
	sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error)
	// downCluster removes the cluster, or what up installed in one it did
	// not create; vmsGone says the VMs were deleted first.
	downCluster(ctx context.Context, p *progress, vmsGone bool) error
	// trafficUncheckable says why mesh traffic cannot be checked here, if it cannot.
	trafficUncheckable() string
	// processes are the cluster's processes hostctl runs itself, for
	// cluster status (cluster.go); none when the cluster is not hostctl's lab.
	processes() []component
}

// open loads the config and the site it names, starting nothing.
func (g *globals) open(cmd *cobra.Command) (config.Config, *statedir.Dir, site, error) {
	cfg, err := g.load(cmd)
	if err != nil {
		return cfg, nil, nil, err
	}
	if err := labPossible(cfg, labvm.Unsupported()); err != nil {
		return cfg, nil, nil, err
	}
	state, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return cfg, nil, nil, err
	}
	ms := machinesFor(cfg, state, cmd.ErrOrStderr())
	v := cfg.Istio.Version
	if cfg.Cluster.Provider == config.Lab {
		if v != "" && v != istioinstall.EmbeddedVersion {
			return cfg, nil, nil, fmt.Errorf("istio.version %s: the lab builds istiod and pilot-agent %s from source and no other version: leave istio.version empty", v, istioinstall.EmbeddedVersion)
		}
		return cfg, state, newLabSite(cfg, state, labMachines(state)), nil
	}
	cs := &clusterSite{cfg: cfg, state: state, ms: ms, kc: cfg.Cluster.Kubeconfig, version: istioinstall.EmbeddedVersion}
	if v != "" && v != istioinstall.EmbeddedVersion {
		if cs.istioctl, err = istioinstall.FindIstioctl(cmd.Context(), v); err != nil {
			return cfg, nil, nil, err
		}
		cs.version = v
	}
	switch cfg.Cluster.Provider {
	case config.Multipass:
		if cfg.Cluster.Servers != 1 {
			return cfg, state, nil, fmt.Errorf("cluster.servers %d: hostctl provisions one k3s server (HA servers are not built): set it to 1", cfg.Cluster.Servers)
		}
		cs.kc, cs.k3s = state.Path("kubeconfig"), multipassProvider(cmd.ErrOrStderr())
	case config.SSH:
		// k3s on the nodes you list.
		hosts := map[string]ssh.Host{}
		for _, n := range cfg.Cluster.Nodes {
			hosts[n.Name] = ssh.Host{Address: n.Address, User: n.User, KeyFile: n.Key}
		}
		cs.kc, cs.k3s = state.Path("kubeconfig"), ssh.New(hosts, state.Path("known_hosts"))
	}
	return cfg, state, cs, nil
}

// labPossible refuses a config asking for the lab (cluster or machines)
// where it cannot run, before anything is built or booted: unsupported is
// labvm.Unsupported(), why not on this OS.
func labPossible(cfg config.Config, unsupported error) error {
	if unsupported != nil && (cfg.Cluster.Provider == config.Lab || cfg.MachineProvider() == config.Lab) {
		return usageError{unsupported}
	}
	return nil
}

// machinesFor is the provider of the config's VMs.
func machinesFor(cfg config.Config, state *statedir.Dir, stderr io.Writer) machine.Provider {
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
	return multipassProvider(stderr)
}

// labMachines is the lab's machine provider, its VMs under the state dir.
func labMachines(state *statedir.Dir) *labmachine.Provider {
	return labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), state.Path("lab", "vms"), cacheDir())
}

// multipassProvider says on stderr what a launch waits for (an instance
// Starting, cloud-init), with the time since it began.
func multipassProvider(stderr io.Writer) *multipass.Provider {
	start := time.Now()
	return &multipass.Provider{Progress: func(format string, args ...any) {
		fmt.Fprintf(stderr, "multipass: %s (%s)\n", fmt.Sprintf(format, args...), time.Since(start).Round(time.Second))
	}}
}
