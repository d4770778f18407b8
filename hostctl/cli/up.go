package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/lab/build"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

type upCmd struct {
	g       *globals
	timeout time.Duration
}

func (c *upCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Converge the cluster, Istio, the workload and every VM, onboarded and Healthy",
		Long: "up provisions what is missing and leaves what is in place: running it again on a healthy setup\n" +
			"changes nothing and says so. It never deletes a cluster or a VM to make progress.",
		Args: cobra.NoArgs,
		RunE: c.run,
	}
	cmd.Flags().DurationVar(&c.timeout, "timeout", 0, "give up after this long (default 30m with Multipass, 10m otherwise; the first lab build takes longer: raise it)")
	return cmd
}

// progress prints "[n/N] step VM: detail (elapsed)" lines to stderr; the
// steps are named up front so every line says how far along it is.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	steps []string
	start time.Time
}

func newProgress(w io.Writer, steps ...string) *progress {
	return &progress{w: w, steps: steps, start: time.Now()}
}

func (p *progress) step(name, vm, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := slices.Index(p.steps, name) + 1
	if vm != "" {
		name += " " + vm
	}
	fmt.Fprintf(p.w, "[%d/%d] %s: %s (%s)\n", n, len(p.steps), name, fmt.Sprintf(format, args...), time.Since(p.start).Round(100*time.Millisecond))
}

// lineWriter reports what a long step writes, line by line.
type lineWriter struct {
	p    *progress
	name string
}

func (w lineWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.p.step(w.name, "", "%s", strings.TrimSpace(line))
	}
	return len(b), nil
}

func (c *upCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, state, s, err := c.g.open(cmd)
	if err != nil {
		return err
	}
	// Before anything starts: a failed up is still the site down must find.
	if err := c.g.remember(cmd); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), upTimeout(c.timeout, cfg))
	defer cancel()
	return up(ctx, cmd.ErrOrStderr(), cfg, state, s)
}

// upTimeout is --timeout, else what a first up needs: on Multipass an image
// download, three launches, k3s and Istio's images (30m); elsewhere 10m.
func upTimeout(flag time.Duration, cfg config.Config) time.Duration {
	switch {
	case flag > 0:
		return flag
	case cfg.Cluster.Provider == config.Multipass || cfg.MachineProvider() == config.Multipass:
		return 30 * time.Minute
	}
	return 10 * time.Minute
}

// labSource finds the hostctl/labbuild module: MESHVM_SOURCE, else the
// checkout the working directory is in.
func labSource() (string, error) {
	if d := os.Getenv("MESHVM_SOURCE"); d != "" {
		return filepath.Join(d, "hostctl", "labbuild"), nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		cand := filepath.Join(dir, "hostctl", "labbuild", "go.mod")
		if _, err := os.Stat(cand); err == nil {
			return filepath.Dir(cand), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the lab builds its control plane from the meshvm checkout: run hostctl from it, or set MESHVM_SOURCE to its path")
		}
		dir = parent
	}
}

func cacheDir() string { return build.DefaultCacheDir() }

func workloadSpec(cfg config.Config) workload.Spec {
	w := cfg.Workload
	return workload.Spec{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Group: w.Group, Port: w.Port, PortName: w.PortName,
		Network: w.Network, ProbePath: w.Probe.Path, ProbePort: w.Probe.Port,
		ProbePeriod: int32(w.Probe.PeriodSeconds), ProbeInitialDelay: int32(w.Probe.InitialDelaySeconds),
		CertificateLifetime: w.CertificateLifetime.Duration}
}

// upSteps are the steps of up and vm add.
var upSteps = []string{"control plane", "workload", "machine", "app", "agent", "onboard", "healthy"}

func up(ctx context.Context, stderr io.Writer, cfg config.Config, state *statedir.Dir, s site) error {
	p := newProgress(stderr, upSteps...)
	r, err := start(ctx, p, cfg, state, s)
	if err != nil {
		return err
	}
	if err := eachVM(cfg.VMs, func(vm config.VM) error { return r.up(ctx, vm.Name) }); err != nil {
		return err
	}
	took := time.Since(p.start).Round(time.Second)
	if own := ownApps(cfg); len(own) > 0 {
		fmt.Fprintf(stderr, "up: %d VM(s) onboarded in %s; %s run their own app (app: false): Healthy follows it on port %d.\n",
			len(cfg.VMs), took, strings.Join(own, ", "), cfg.Workload.Probe.Port)
	} else {
		fmt.Fprintf(stderr, "up: %d VM(s) onboarded and Healthy in %s.\n", len(cfg.VMs), took)
	}
	if why := s.trafficUncheckable(); why != "" {
		fmt.Fprintf(stderr, "up: traffic between workloads is not exercised: %s.\n", why)
	}
	return nil
}

// up converges one VM: machine, agent, onboarding.
func (r *session) up(ctx context.Context, name string) error {
	m, c, err := r.provision(ctx, name)
	if err != nil {
		return err
	}
	defer c.Close()
	return r.onboard(ctx, name, m, c, false, false)
}

// saveFiles keeps the generated workload files in the state directory (0600).
func saveFiles(state *statedir.Dir, vm string, f workloadfiles.Files) error {
	for name, data := range f.Map() {
		if err := state.WriteSecret(filepath.Join("vms", vm, "files", name), data); err != nil {
			return err
		}
	}
	return nil
}

// restConfig loads the cluster's kubeconfig, naming what to do when it is
// missing or broken.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if _, err := os.Stat(kubeconfig); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no kubeconfig at %s: is the cluster up? run hostctl up (or hostctl cluster up)", kubeconfig)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s does not load (%w): fix the file, or point cluster.kubeconfig (--kubeconfig) at another", kubeconfig, err)
	}
	return rc, nil
}

func kubeClients(kubeconfig string) (workload.Clients, error) {
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return workload.Clients{}, err
	}
	// Many VMs onboard and report at once: client-go's default 5 requests/s would queue them.
	rc.QPS, rc.Burst = 50, 100
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return workload.Clients{}, err
	}
	ic, err := istioclient.NewForConfig(rc)
	if err != nil {
		return workload.Clients{}, err
	}
	return workload.Clients{Kube: kc, Istio: ic}, nil
}
