// Package stack brings up the lab's control plane in order: the
// binaries (built from source, cached), the Kubernetes control plane, then
// Istio, installed as on any cluster (rendered from the embedded charts,
// applied where the lab can hold it) with istiod run as a process. It is the
// lab's cluster provider; hostctl's steps and the end-to-end tests both go
// through it.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/instance"
	meshlab "github.com/meshvm/meshvm/lab/mesh"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// Config says where things are and what the mesh is called.
type Config struct {
	// ModuleDir is lab/toolchain; CacheDir keeps the built binaries.
	ModuleDir, CacheDir string
	// Dir keeps the running control plane's state.
	Dir      string
	Istio    istioinstall.Options
	Progress io.Writer
	// Ports are the control plane's (default: the lab's fixed ones).
	Ports cluster.Ports
}

// Stack is a running lab control plane.
type Stack struct {
	Bins       build.Result
	Kubeconfig string
}

// Up builds what is missing and starts what is not running: the cluster,
// then Istio.
func Up(ctx context.Context, c Config) (*Stack, error) {
	st, err := UpCluster(ctx, c)
	if err != nil {
		return nil, err
	}
	return st, InstallIstio(ctx, c, st)
}

// UpCluster builds the binaries if needed and starts the Kubernetes control plane.
func UpCluster(ctx context.Context, c Config) (*Stack, error) {
	bins, err := build.Build(ctx, build.Options{ModuleDir: c.ModuleDir, CacheDir: c.CacheDir, Progress: c.Progress})
	if err != nil {
		return nil, err
	}
	cl := filepath.Join(c.Dir, "cluster")
	if c.Ports == (cluster.Ports{}) {
		inst, err := instance.Claim(c.Dir)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(progress(c), "%s: %s\n", inst, Describe(inst))
	}
	if err := cluster.Up(ctx, cluster.Config{Dir: cl, APIServer: bins.Path("kube-apiserver"),
		ControllerManager: bins.Path("kube-controller-manager"), Progress: c.Progress, Ports: c.Ports}); err != nil {
		return nil, err
	}
	return &Stack{Bins: bins, Kubeconfig: cluster.Kubeconfig(cl)}, nil
}

// InstallIstio renders Istio (c.Istio.Revision's control plane), applies
// what the lab can hold, and runs that revision's istiod with the rendered
// mesh configuration and environment; other revisions' keep running.
func InstallIstio(ctx context.Context, c Config, st *Stack) error {
	objs, changes, err := applyIstio(ctx, c, st)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: %d objects rendered from the embedded charts (Istio %s): %s (workloads and webhooks: no kubelet here)\n",
		len(objs), istioinstall.EmbeddedVersion, istioinstall.Summary(changes))
	mesh, err := istioinstall.MeshConfig(objs, c.Istio.Revision)
	if err != nil {
		return err
	}
	env, err := istioinstall.IstiodEnv(objs, c.Istio.Revision)
	if err != nil {
		return err
	}
	return meshlab.Up(ctx, meshlab.Config{Dir: filepath.Join(c.Dir, "istio"), Revision: c.Istio.Revision, Istiod: st.Bins.Path("pilot-discovery"),
		Gateway:    st.Bins.Path("lab-envoy"),
		Kubeconfig: st.Kubeconfig, Mesh: mesh, Env: env, ClusterID: c.Istio.ClusterName, Progress: c.Progress})
}

// InstallIstioAPI applies what InstallIstio applies (Istio's resources,
// its namespace, its mesh config) and runs no istiod: for runs that stand
// in for istiod's writes (pkg/mesh/autoregsim) at a scale the lab's istiod
// and VMs cannot reach.
func InstallIstioAPI(ctx context.Context, c Config, st *Stack) error {
	objs, changes, err := applyIstio(ctx, c, st)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio API: %d objects rendered (Istio %s): %s (no istiod)\n", len(objs), istioinstall.EmbeddedVersion, istioinstall.Summary(changes))
	return nil
}

// applyIstio renders c.Istio and applies what the lab can hold.
func applyIstio(ctx context.Context, c Config, st *Stack) ([]istioinstall.Object, []istioinstall.Change, error) {
	objs, err := istioinstall.RenderIn(filepath.Join(c.Dir, "istio-render"), c.Istio)
	if err != nil {
		return nil, nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("lab kubeconfig: %w", err)
	}
	changes, err := istioinstall.Apply(ctx, rc, objs, istioinstall.LabRunnable)
	return objs, changes, err
}

// DownCluster stops istiod and the control plane and removes their state,
// keeping the lab's VMs.
func DownCluster(ctx context.Context, dir string) error {
	if err := Down(ctx, dir, false); err != nil {
		return err
	}
	return errors.Join(os.RemoveAll(filepath.Join(dir, "istio")), os.RemoveAll(filepath.Join(dir, "cluster")))
}

// Down stops istiod, then the control plane; purge also deletes the lab's
// state directory (stop its VMs first: their disks live there).
func Down(ctx context.Context, dir string, purge bool) error {
	err := errors.Join(StopController(ctx, dir), meshlab.Down(ctx, filepath.Join(dir, "istio")), cluster.Down(ctx, filepath.Join(dir, "cluster")))
	if purge && err == nil {
		err = errors.Join(instance.Release(dir), os.RemoveAll(dir))
	}
	return err
}

// Describe says what the lab instance holds on this machine.
func Describe(inst instance.Instance) string {
	probes, _ := controllerAddrs(inst, 0)
	return fmt.Sprintf("API server 127.0.0.1:%d, etcd 127.0.0.1:%d, istiod %s:%d, controller probes %s, VMs 10.%d.0.0/16 (netns meshvm%s-<vm>)",
		cluster.PortsOf(inst).API, cluster.PortsOf(inst).Etcd, inst.IstiodIP(), meshlab.GatewayPort, probes, inst.Octet(), inst.Names())
}
