// Package site is the lab as a site hostctl drives (fleet.Site): its
// cluster, istiod and VMs on this machine. fleet does not link it; hostctl's
// CLI hands it over (Lab).
package site

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/instance"
	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/lab/mesh"
	"github.com/meshvm/meshvm/lab/procs"
	labstack "github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
)

// Lab is the lab as fleet.Open takes it.
var Lab = fleet.Lab{Site: Open, Machines: Machines}

// labSite is the lab: a control plane built from source running as local
// processes, istiod among them, and VMs that are network namespaces booting
// systemd. VMs reach istiod on the host's end of their link; the sidecar is
// the pilot-agent built from source with the lab's Envoy stand-in.
type labSite struct {
	cfg   config.Config
	state *statedir.Dir
	lab   *labmachine.Provider
	stack *labstack.Stack
}

// Open is the lab site of the config, its state under state's lab
// directory, starting nothing. The lab builds one Istio version.
func Open(cfg config.Config, state *statedir.Dir) (fleet.Site, error) {
	if v := cfg.Istio.Version; v != "" && v != istioinstall.EmbeddedVersion {
		return nil, fmt.Errorf("istio.version %s: the lab builds istiod and pilot-agent %s from source and no other version: leave istio.version empty", v, istioinstall.EmbeddedVersion)
	}
	return newLabSite(cfg, state), nil
}

func newLabSite(cfg config.Config, state *statedir.Dir) *labSite {
	return &labSite{cfg: cfg, state: state, lab: machines(state)}
}

// Machines is the lab's machine provider, its VMs under the state dir.
func Machines(state *statedir.Dir) machine.Provider { return machines(state) }

func machines(state *statedir.Dir) *labmachine.Provider {
	dir := state.Path("lab", "vms")
	// A lab reached through a symlink (another state directory's) is the
	// same lab: its VMs are known by the path they were booted from.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), dir, build.DefaultCacheDir())
}

func (s *labSite) Machines() machine.Provider { return s.lab }

func (s *labSite) Kubeconfig() string { return cluster.Kubeconfig(s.state.Path("lab", "cluster")) }

func (s *labSite) config(p fleet.Reporter, step string) (labstack.Config, error) {
	src, err := build.ModuleDir()
	if err != nil {
		return labstack.Config{}, err
	}
	return labstack.Config{ModuleDir: src, CacheDir: build.DefaultCacheDir(), Dir: s.state.Path("lab"), Istio: fleet.IstioOptions(s.cfg),
		Progress: lineWriter{p, step}}, nil
}

func (s *labSite) UpCluster(ctx context.Context, p fleet.Reporter) error {
	c, err := s.config(p, "control plane")
	if err != nil {
		return err
	}
	p.Step("control plane", "", "building (cached after the first run) and starting the lab cluster")
	s.stack, err = labstack.UpCluster(ctx, c)
	return err
}

func (s *labSite) InstallIstio(ctx context.Context, p fleet.Reporter) error {
	c, err := s.config(p, "control plane")
	if err != nil {
		return err
	}
	if s.stack == nil {
		if err := s.UpCluster(ctx, p); err != nil {
			return err
		}
	}
	return labstack.InstallIstio(ctx, c, s.stack)
}

func (s *labSite) Istio() ([]istioinstall.Object, istioinstall.Keep, error) {
	objs, err := istioinstall.RenderIn(s.state.Path("lab", "istio-render"), fleet.IstioOptions(s.cfg))
	return objs, istioinstall.LabRunnable, err
}

func (s *labSite) EastWest(context.Context) (string, string) {
	return "not run", "the lab has no kubelet or load balancer: VMs reach istiod on the host's address"
}

func (s *labSite) istioDir() string { return s.state.Path("lab", "istio") }

func (s *labSite) IstiodReady(ctx context.Context, rev string) (string, error) {
	if err := mesh.Ready(ctx, s.istioDir(), rev); err != nil {
		return "", err
	}
	v, _, err := s.IstiodVersion(ctx, rev)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("ready, revision %s, Istio %s, a local process", workloadfiles.RevisionName(rev), v), nil
}

func (s *labSite) Revision(context.Context) string { return s.cfg.Istio.Revision }

// istiodVersion is the lab istiod's /version. It reports the pinned
// istio.io/istio pseudo-version it was built from, which is Istio's
// EmbeddedVersion line: that is the version the VMs get.
func (s *labSite) IstiodVersion(ctx context.Context, rev string) (string, string, error) {
	v, err := mesh.Version(ctx, s.istioDir(), rev)
	if err != nil {
		return "", "", err
	}
	src, err := build.ModuleDir()
	if err != nil {
		return "", "", err
	}
	pins, err := build.Pinned(src)
	if err != nil {
		return "", "", err
	}
	if v == pins.Istio {
		return istioinstall.EmbeddedVersion, "its /version (" + v + ", the pinned build of that line)", nil
	}
	return v, "its /version", nil
}

func (s *labSite) RevisionOf(_ context.Context, controller string) string {
	for _, rev := range mesh.Revisions(s.istioDir()) {
		if mesh.PodName(rev) == controller {
			return rev
		}
	}
	return ""
}

func (s *labSite) ClusterID(context.Context) string { return s.cfg.Istio.ClusterName }

func (s *labSite) JoinedIstio(context.Context) string { return "" }

// IstiodAddress is the lab instance's one istiod address, the same for
// every VM and whatever the VM's own address.
func (s *labSite) IstiodAddress(context.Context, string) (string, error) {
	return s.lab.IstiodAddress(), nil
}

func (s *labSite) Sidecar(ctx context.Context, arch, version string) (onboard.Sidecar, error) {
	if arch != "" && arch != runtime.GOARCH {
		return onboard.Sidecar{}, fmt.Errorf("lab VM is %s, the lab builds the sidecar for %s only", arch, runtime.GOARCH)
	}
	if version != istioinstall.EmbeddedVersion {
		return onboard.Sidecar{}, fmt.Errorf("Istio %s: the lab builds pilot-agent %s only", version, istioinstall.EmbeddedVersion)
	}
	src, err := build.ModuleDir()
	if err != nil {
		return onboard.Sidecar{}, err
	}
	bins := build.Result{}
	if s.stack != nil {
		bins = s.stack.Bins
	} else if bins, err = build.Build(ctx, build.Options{ModuleDir: src, CacheDir: build.DefaultCacheDir(), Progress: io.Discard}); err != nil {
		return onboard.Sidecar{}, err
	}
	bootstrap, err := build.IstioFile(ctx, src, "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		return onboard.Sidecar{}, err
	}
	return onboard.Sidecar{PilotAgent: bins.Path("pilot-agent"), Envoy: bins.Path("lab-envoy"), BootstrapTemplate: bootstrap}, nil
}

func (s *labSite) DownCluster(ctx context.Context, p fleet.Reporter, vmsGone bool) error {
	if vmsGone {
		// A lab VM the config no longer lists still runs from the state
		// directory: keep it (and its disk) rather than fail half-way.
		left, err := s.lab.List(ctx)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			var names []string
			for _, m := range left {
				names = append(names, m.Name)
			}
			if err := labstack.DownCluster(ctx, s.state.Path("lab")); err != nil {
				return err
			}
			p.Report(progress.Event{Step: progress.Cluster, Cause: reason.Because(reason.LabVMsLeft),
				Message: fmt.Sprintf("lab control plane stopped and its state removed; lab VM(s) %s are not in the config and stay", strings.Join(names, ", "))})
			return nil
		}
		// Nothing of the lab is left to keep: its whole state directory goes.
		if err := labstack.Down(ctx, s.state.Path("lab"), true); err != nil {
			return err
		}
		p.Step("cluster", "", "lab control plane stopped and its state removed")
		return nil
	}
	if err := labstack.DownCluster(ctx, s.state.Path("lab")); err != nil {
		return err
	}
	p.Step("cluster", "", "lab control plane and istiod stopped, their state removed; the VMs are kept")
	return nil
}

func (s *labSite) TrafficUncheckable() string {
	return "the lab has no Envoy data path (and no pods), so mesh traffic cannot flow"
}

// processes are the lab cluster's control-plane processes; the API
// server's names the lab instance they run as and what it holds.
func (s *labSite) Processes() []fleet.Component {
	inst := instance.Of(s.state.Path("lab"))
	var out []fleet.Component
	dir := s.state.Path("lab", "cluster")
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if pid, ok := procs.Dir(dir).Running(name); ok {
			c := fleet.Component{Name: name, State: "running", Detail: fmt.Sprintf("pid %d", pid)}
			if name == "kube-apiserver" {
				c.Detail += fmt.Sprintf("; %s: %s", inst, labstack.Describe(inst))
			}
			out = append(out, c)
		} else {
			out = append(out, fleet.Component{Name: name, State: "stopped", Cause: reason.Because(reason.ClusterStopped)})
		}
	}
	return out
}

// lineWriter reports what a long step writes, line by line.
type lineWriter struct {
	p    fleet.Reporter
	name string
}

func (w lineWriter) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.p.Step(progress.Step(w.name), "", "%s", strings.TrimSpace(line))
	}
	return len(b), nil
}
