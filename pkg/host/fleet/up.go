package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// lineWriter reports what a long step writes, line by line.
type lineWriter struct {
	p    Reporter
	name string
}

func (w lineWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.p.Step(w.name, "", "%s", strings.TrimSpace(line))
	}
	return len(b), nil
}

func WorkloadSpec(cfg config.Config) workload.Spec {
	w := cfg.Workload
	return workload.Spec{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Group: w.Group, Port: w.Port, PortName: w.PortName,
		Network: w.Network, ProbePath: w.Probe.Path, ProbePort: w.Probe.Port,
		ProbePeriod: int32(w.Probe.PeriodSeconds), ProbeInitialDelay: int32(w.Probe.InitialDelaySeconds),
		CertificateLifetime: w.CertificateLifetime.Duration}
}

// UpSteps are the steps Up and vm add report.
var UpSteps = []string{"control plane", "workload", "machine", "app", "agent", "onboard", "healthy"}

// Up converges the site and every VM of the config, and says how it went
// on stderr; p reports the upSteps.
func (f *Fleet) Up(ctx context.Context, p Reporter, stderr io.Writer) error {
	cfg, s := f.Config, f.Site
	begun := time.Now()
	r, err := start(ctx, p, f)
	if err != nil {
		return err
	}
	if err := eachVM(cfg.VMs, func(vm config.VM) error { return r.up(ctx, vm.Name) }); err != nil {
		return err
	}
	took := time.Since(begun).Round(time.Second)
	if own := ownApps(cfg); len(own) > 0 {
		fmt.Fprintf(stderr, "up: %d VM(s) onboarded in %s; %s run their own app (app: false): Healthy follows it on port %d.\n",
			len(cfg.VMs), took, strings.Join(own, ", "), cfg.Workload.Probe.Port)
	} else {
		fmt.Fprintf(stderr, "up: %d VM(s) onboarded and Healthy in %s.\n", len(cfg.VMs), took)
	}
	if why := s.TrafficUncheckable(); why != "" {
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

// RestConfig loads the cluster's kubeconfig, naming what to do when it is
// missing or broken.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if _, err := os.Stat(kubeconfig); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no kubeconfig at %s: is the cluster up? run hostctl up (or hostctl cluster up)", kubeconfig)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s does not load (%w): fix the file, or point cluster.kubeconfig (--kubeconfig) at another", kubeconfig, err)
	}
	return rc, nil
}

func KubeClients(kubeconfig string) (workload.Clients, error) {
	rc, err := RestConfig(kubeconfig)
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
