package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labmachine"
	"github.com/meshvm/meshvm/pkg/labstack"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/onboard"
	"github.com/meshvm/meshvm/pkg/statedir"
	"github.com/meshvm/meshvm/pkg/workload"
	"github.com/meshvm/meshvm/pkg/workloadfiles"
)

type upCmd struct {
	g        *globals
	provider string
	timeout  time.Duration
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
	cmd.Flags().StringVar(&c.provider, "provider", "", "override cluster.provider (lab|multipass|ssh|kubeconfig)")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Minute, "give up after this long (the first lab build takes longer: raise it)")
	return cmd
}

// progress prints "[n/N] step: detail (elapsed)" lines to stderr.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	start time.Time
}

func (p *progress) step(n int, name, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%d/%d] %s: %s (%s)\n", n, p.total, name, fmt.Sprintf(format, args...), time.Since(p.start).Round(100*time.Millisecond))
}

// lineWriter prefixes what a long step writes with its step number.
type lineWriter struct {
	p    *progress
	n    int
	name string
}

func (w lineWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.p.step(w.n, w.name, "%s", strings.TrimSpace(line))
	}
	return len(b), nil
}

func (c *upCmd) run(cmd *cobra.Command, _ []string) error {
	cfg, err := c.g.loadLab(cmd, c.provider)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	return upLab(ctx, cmd.ErrOrStderr(), cfg)
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

func cacheDir() string { return labbuild.DefaultCacheDir() }

func workloadSpec(cfg config.Config) workload.Spec {
	w := cfg.Workload
	return workload.Spec{Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Group: w.Group, Port: w.Port, PortName: w.PortName,
		Network: w.Network, ProbePath: w.Probe.Path, ProbePort: w.Probe.Port,
		ProbePeriod: int32(w.Probe.PeriodSeconds), ProbeInitialDelay: int32(w.Probe.InitialDelaySeconds)}
}

const upSteps = 6

func upLab(ctx context.Context, stderr io.Writer, cfg config.Config) error {
	p := &progress{w: stderr, total: upSteps, start: time.Now()}
	src, err := labSource()
	if err != nil {
		return err
	}
	state, err := statedir.Open(cfg.StateDir)
	if err != nil {
		return err
	}
	p.step(1, "lab control plane", "building (cached after the first run) and starting")
	st, err := labstack.Up(ctx, labstack.Config{ModuleDir: src, CacheDir: cacheDir(), Dir: state.Path("lab"),
		MeshID: cfg.Istio.MeshID, ClusterID: cfg.Istio.ClusterName, Progress: lineWriter{p, 1, "lab control plane"}})
	if err != nil {
		return err
	}
	clients, err := kubeClients(st.Kubeconfig)
	if err != nil {
		return err
	}
	spec := workloadSpec(cfg)
	changes, err := workload.Ensure(ctx, clients, spec)
	if err != nil {
		return err
	}
	for _, ch := range changes {
		p.step(2, "workload", "%s %s", ch.Object, ch.Action)
	}
	bootstrap, err := labbuild.IstioFile(ctx, src, "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	lab := labmachine.New(log, state.Path("lab", "vms"), cacheDir())
	side := onboard.Sidecar{PilotAgent: st.Bins.Path("pilot-agent"), Envoy: st.Bins.Path("lab-envoy"), BootstrapTemplate: bootstrap}
	deps := onboard.Deps{Provider: lab, State: state, AgentBinary: agentBinary(src)}

	// VMs onboard concurrently; one failing is reported by name and does not stop the others.
	var wg sync.WaitGroup
	errs := make([]error, len(cfg.VMs))
	for i, vm := range cfg.VMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := upVM(ctx, p, lab, deps, clients, cfg, spec, side, vm); err != nil {
				errs[i] = fmt.Errorf("%s: %w", vm.Name, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "up: %d VM(s) onboarded and Healthy in %s. The lab runs no Envoy: traffic between workloads is not exercised.\n",
		len(cfg.VMs), time.Since(p.start).Round(time.Second))
	return nil
}

func upVM(ctx context.Context, p *progress, lab *labmachine.Provider, deps onboard.Deps, clients workload.Clients,
	cfg config.Config, spec workload.Spec, side onboard.Sidecar, vm config.VM) error {
	m, err := lab.Launch(ctx, machine.Spec{Name: vm.Name})
	if err != nil {
		return err
	}
	hostIP, err := lab.HostAddress(vm.Name)
	if err != nil {
		return err
	}
	p.step(3, "machine "+vm.Name, "%s at %s", strings.ToLower(m.State), m.Addresses[0])
	if err := labApp(ctx, lab, vm.Name, cfg.Workload.Port); err != nil {
		return err
	}
	client, err := onboard.InstallAgent(ctx, deps, m)
	if err != nil {
		return err
	}
	defer client.Close()
	v, err := client.Version(ctx)
	if err != nil {
		return err
	}
	p.step(4, "agent "+vm.Name, "vmagent %s answering on %s:%s", v.GetVersion(), m.Addresses[0], onboard.AgentPort)
	lastToken, _ := deps.State.ReadFile(filepath.Join("vms", vm.Name, "files", "istio-token"))
	files, err := workload.Files(ctx, clients, spec, workload.FilesFor{ClusterID: cfg.Istio.ClusterName,
		VMIP: m.Addresses[0], IstiodIP: hostIP, TokenLifetime: cfg.Workload.TokenLifetime.Duration, ReuseToken: lastToken})
	if err != nil {
		return err
	}
	if err := saveFiles(deps.State, vm.Name, files); err != nil {
		return err
	}
	rep, err := onboard.Onboard(ctx, client, files, side, onboard.Hosts{
		IstiodIP: hostIP, IstiodName: workloadfiles.IstiodHost("istio-system", ""), VMIP: m.Addresses[0], VMName: vm.Name})
	if err != nil {
		return err
	}
	sent := "nothing sent"
	if len(rep.Sent) > 0 {
		sent = "sent " + strings.Join(rep.Sent, ", ")
	}
	p.step(5, "onboard "+vm.Name, "%s; %d file(s) already in place; sidecar %s", sent, len(rep.Skipped), rep.Sidecar.GetActiveState())
	e, err := workload.WaitHealthy(ctx, clients, spec, m.Addresses[0], 2*time.Minute)
	if err != nil {
		return err
	}
	p.step(6, "healthy "+vm.Name, "WorkloadEntry %s Healthy", e.Name)
	return nil
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

// agentBinary finds the static vmagent for arch: in MESHVM_AGENT_DIR, else
// where `make build` writes it.
func agentBinary(src string) func(string) (string, error) {
	return func(arch string) (string, error) {
		dir := os.Getenv("MESHVM_AGENT_DIR")
		if dir == "" {
			dir = filepath.Join(src, "..", "..", "bin")
		}
		p := filepath.Join(dir, "vmagent-linux-"+arch)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("no vmagent for linux/%s at %s: run make build", arch, p)
		}
		return p, nil
	}
}

func kubeClients(kubeconfig string) (workload.Clients, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return workload.Clients{}, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
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

// labApp runs the recipe's app on a lab VM: an HTTP server on the workload
// port, as a unit (the recipe runs python3 -m http.server; the lab's Debian
// has busybox).
func labApp(ctx context.Context, p machine.Provider, vm string, port int) error {
	unit := fmt.Sprintf(`[Unit]
Description=meshvm lab app: HTTP on port %[1]d
After=network.target

[Service]
ExecStartPre=/bin/sh -c 'mkdir -p /srv/lab-app && echo "hello from %[2]s" > /srv/lab-app/index.html'
ExecStart=/bin/busybox httpd -f -p %[1]d -h /srv/lab-app
Restart=always

[Install]
WantedBy=multi-user.target
`, port, vm)
	if err := p.Transfer(ctx, vm, "/etc/systemd/system/meshvm-lab-app.service", strings.NewReader(unit), 0o644); err != nil {
		return err
	}
	if out, err := p.Exec(ctx, vm, nil, "sh", "-c", "systemctl daemon-reload && systemctl enable --now meshvm-lab-app.service"); err != nil {
		return fmt.Errorf("lab app: %w: %s", err, out)
	}
	return nil
}
