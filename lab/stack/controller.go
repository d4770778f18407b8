package stack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// controllerAddrs are where the lab instance's controller answers its
// probes and serves its metrics.
func controllerAddrs(inst instance.Instance) (probes, metrics string) {
	at := func(base, off int) string { return "127.0.0.1:" + strconv.Itoa(inst.Port(base, off)) }
	return at(18381, instance.ControllerProbePort), at(18380, instance.ControllerMetricsPort)
}

// ControllerDir is where the lab's controller keeps its log, PID and caches.
func ControllerDir(dir string) string { return filepath.Join(dir, "controller") }

// StartController runs fleet mode's controller (the static binary bin) as a
// local process against the lab's API server, as istiod runs, with the
// lab's pilot-agent and Envoy stand-in as the sidecar it delivers; a
// controller already running the same way is kept. Its leader election is
// on, as anywhere.
func StartController(ctx context.Context, c Config, st *Stack, bin string, resync time.Duration) (int, error) {
	dir := ControllerDir(c.Dir)
	side := filepath.Join(dir, "sidecar", istioinstall.EmbeddedVersion, runtime.GOARCH)
	if err := os.MkdirAll(side, 0o700); err != nil {
		return 0, err
	}
	bootstrap, err := build.IstioFile(ctx, c.ModuleDir, "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		return 0, err
	}
	for name, target := range map[string]string{"pilot-agent": st.Bins.Path("pilot-agent"), "envoy": st.Bins.Path("lab-envoy"), "envoy_bootstrap_tmpl.json": bootstrap} {
		link := filepath.Join(side, name)
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return 0, err
		}
	}
	probes, metrics := controllerAddrs(instance.Of(c.Dir))
	ready := func(ctx context.Context) error { return controllerReady(ctx, probes) }
	spec := procs.Spec{Name: controllerName, Bin: bin, Args: []string{"--kubeconfig", st.Kubeconfig, "--namespace", controllerNamespace,
		"--metrics-bind-address", metrics, "--health-probe-bind-address", probes,
		"--sidecar-dir", filepath.Join(dir, "sidecar"), "--cache-dir", filepath.Join(dir, "cache"), "--resync", resync.String()}}
	pd := procs.Dir(dir)
	sum := filepath.Join(dir, controllerName+".spec")
	want := spec.Sum(binStamp(bin))
	if pid, ok := pd.Running(controllerName); ok {
		if had, _ := os.ReadFile(sum); string(had) == want && ready(ctx) == nil {
			fmt.Fprintf(progress(c), "controller already running (pid %d)\n", pid)
			return pid, nil
		}
		if err := pd.Stop(ctx, controllerName, 10*time.Second); err != nil {
			return pid, err
		}
	}
	pid, err := pd.Start(spec)
	if err != nil {
		return 0, err
	}
	if err := pd.WaitReady(ctx, controllerName, pid, 30*time.Second, ready); err != nil {
		return pid, err
	}
	if err := os.WriteFile(sum, []byte(want), 0o600); err != nil {
		return pid, err
	}
	fmt.Fprintf(progress(c), "controller ready (pid %d, a lab process; log %s)\n", pid, pd.LogPath(controllerName))
	return pid, nil
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

// StopController stops the lab's controller, if it runs.
func StopController(ctx context.Context, dir string) error {
	return procs.Dir(ControllerDir(dir)).Stop(ctx, controllerName, 10*time.Second)
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
