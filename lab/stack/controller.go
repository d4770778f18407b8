package stack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/lab/procs"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// The lab's controller keeps its Secrets in fleetstore.DefaultNamespace
// (not imported: the workload package's tests run the lab stack, and the
// store links workload).
const (
	controllerNamespace = "meshvm-system"
	controllerName      = "meshvm-controller"
)

// MaxControllerReplicas is how many controller processes a lab instance
// has ports for.
const MaxControllerReplicas = 1 + (instance.IstiodPorts-instance.ControllerReplicaPorts)/2

// ControllerOptions is how the lab runs fleet mode's controller.
type ControllerOptions struct {
	// Resync is the controller's periodic look at each VM.
	Resync time.Duration
	// Replicas is how many controller processes run, leader-elected on
	// the Lease (0: one); a failover test runs two.
	Replicas int
	// Election is the replicas' timing on the Lease; zero: the
	// controller's defaults.
	Election Election
}

// Election is leader election's timing (the controller's
// --leader-elect-* flags): a failover test makes it short, so that a
// killed leader's Lease passes to the other replica in seconds.
type Election struct{ Lease, Renew, Retry time.Duration }

func (e Election) args() []string {
	if e == (Election{}) {
		return nil
	}
	return []string{"--leader-elect-lease-duration", e.Lease.String(), "--leader-elect-renew-deadline", e.Renew.String(), "--leader-elect-retry-period", e.Retry.String()}
}

// Replica is one of the lab controller's processes.
type Replica struct {
	Name string
	PID  int
	// Metrics is the address of its metrics endpoint, which tells
	// whether it leads (leader_election_master_status).
	Metrics string
}

// replicaName is meshvm-controller for the first replica (the one
// hostctl up starts), meshvm-controller-2, -3... for the others.
func replicaName(i int) string {
	if i == 0 {
		return controllerName
	}
	return controllerName + "-" + strconv.Itoa(i+1)
}

// controllerAddrs are where the lab instance's controller replica i
// answers its probes and serves its metrics.
func controllerAddrs(inst instance.Instance, i int) (probes, metrics string) {
	at := func(base, off int) string { return "127.0.0.1:" + strconv.Itoa(inst.Port(base, off)) }
	if i == 0 {
		return at(18381, instance.ControllerProbePort), at(18380, instance.ControllerMetricsPort)
	}
	off := instance.ControllerReplicaPorts + 2*(i-1)
	return at(18381+2*i, off), at(18380+2*i, off+1)
}

// ControllerDir is where the lab's controller keeps its log, PID and caches.
func ControllerDir(dir string) string { return filepath.Join(dir, "controller") }

// StartController runs fleet mode's controller (the static binary bin) as
// local processes against the lab's API server, as istiod runs, with the
// lab's pilot-agent and Envoy stand-in as the sidecar it delivers: o's
// replicas, each kept if it already runs the same way, and any further
// replica a failover test started stopped. Leader election is on, as
// anywhere.
func StartController(ctx context.Context, c Config, st *Stack, bin string, o ControllerOptions) ([]Replica, error) {
	n := max(o.Replicas, 1)
	if n > MaxControllerReplicas {
		return nil, fmt.Errorf("%d controller replicas: a lab instance has ports for %d", n, MaxControllerReplicas)
	}
	dir := ControllerDir(c.Dir)
	side := filepath.Join(dir, "sidecar", istioinstall.EmbeddedVersion, runtime.GOARCH)
	if err := os.MkdirAll(side, 0o700); err != nil {
		return nil, err
	}
	bootstrap, err := build.IstioFile(ctx, c.ModuleDir, "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		return nil, err
	}
	for name, target := range map[string]string{"pilot-agent": st.Bins.Path("pilot-agent"), "envoy": st.Bins.Path("lab-envoy"), "envoy_bootstrap_tmpl.json": bootstrap} {
		link := filepath.Join(side, name)
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return nil, err
		}
	}
	var rs []Replica
	for i := range n {
		r, err := startReplica(ctx, c, st, bin, o, i)
		if err != nil {
			return rs, err
		}
		rs = append(rs, r)
	}
	pd := procs.Dir(dir)
	for i := n; i < MaxControllerReplicas; i++ {
		if err := pd.Stop(ctx, replicaName(i), 10*time.Second); err != nil {
			return rs, err
		}
	}
	return rs, nil
}

func startReplica(ctx context.Context, c Config, st *Stack, bin string, o ControllerOptions, i int) (Replica, error) {
	dir := ControllerDir(c.Dir)
	name := replicaName(i)
	probes, metrics := controllerAddrs(instance.Of(c.Dir), i)
	ready := func(ctx context.Context) error { return controllerReady(ctx, probes) }
	// Each replica its own cache: two processes never write one file.
	cache := filepath.Join(dir, "cache")
	if i > 0 {
		cache += "-" + strconv.Itoa(i+1)
	}
	spec := procs.Spec{Name: name, Bin: bin, Args: append([]string{"--kubeconfig", st.Kubeconfig, "--namespace", controllerNamespace,
		"--metrics-bind-address", metrics, "--health-probe-bind-address", probes,
		"--sidecar-dir", filepath.Join(dir, "sidecar"), "--cache-dir", cache, "--resync", o.Resync.String()}, o.Election.args()...)}
	pd := procs.Dir(dir)
	sum := filepath.Join(dir, name+".spec")
	want := spec.Sum(binStamp(bin))
	r := Replica{Name: name, Metrics: metrics}
	if pid, ok := pd.Running(name); ok {
		if had, _ := os.ReadFile(sum); string(had) == want && ready(ctx) == nil {
			fmt.Fprintf(progress(c), "%s already running (pid %d)\n", name, pid)
			r.PID = pid
			return r, nil
		}
		if err := pd.Stop(ctx, name, 10*time.Second); err != nil {
			return r, err
		}
	}
	pid, err := pd.Start(spec)
	if err != nil {
		return r, err
	}
	r.PID = pid
	if err := pd.WaitReady(ctx, name, pid, 30*time.Second, ready); err != nil {
		return r, err
	}
	if err := os.WriteFile(sum, []byte(want), 0o600); err != nil {
		return r, err
	}
	fmt.Fprintf(progress(c), "%s ready (pid %d, a lab process; log %s)\n", name, pid, pd.LogPath(name))
	return r, nil
}

func progress(c Config) interface{ Write([]byte) (int, error) } {
	if c.Progress == nil {
		return io.Discard
	}
	return c.Progress
}

func controllerReady(ctx context.Context, probes string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+probes+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s", resp.Status)
	}
	return nil
}

// StopController stops the lab's controller, every replica that runs.
func StopController(ctx context.Context, dir string) error {
	var errs []error
	for i := range MaxControllerReplicas {
		errs = append(errs, procs.Dir(ControllerDir(dir)).Stop(ctx, replicaName(i), 10*time.Second))
	}
	return errors.Join(errs...)
}

// BuildController builds the controller (static) from the meshvm checkout
// whose lab/toolchain module is moduleDir, into the controller's directory.
func BuildController(ctx context.Context, c Config) (string, error) {
	bin := filepath.Join(ControllerDir(c.Dir), "bin", controllerName)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./controller")
	cmd.Dir = filepath.Join(c.ModuleDir, "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the controller in %s: %w: %s", cmd.Dir, err, out)
	}
	return bin, nil
}

// binStamp names the binary's content: a rebuilt controller that differs
// is restarted (go build rewrites an unchanged one).
func binStamp(bin string) string {
	f, err := os.Open(bin)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
