// Package labstack brings up the lab's control plane in order: the
// binaries (built from source, cached), the Kubernetes control plane, then
// Istio, installed as on any cluster (rendered from the embedded charts,
// applied where the lab can hold it) with istiod run as a process. It is the
// lab's cluster provider; hostctl's steps and the end-to-end tests both go
// through it.
package labstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/pkg/istioinstall"
	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labcluster"
	"github.com/meshvm/meshvm/pkg/meshlab"
)

// Config says where things are and what the mesh is called.
type Config struct {
	// ModuleDir is hostctl/labbuild; CacheDir keeps the built binaries.
	ModuleDir, CacheDir string
	// Dir keeps the running control plane's state.
	Dir      string
	Istio    istioinstall.Options
	Progress io.Writer
}

// Stack is a running lab control plane.
type Stack struct {
	Bins       labbuild.Result
	Kubeconfig string
}

// Up builds what is missing and starts what is not running.
func Up(ctx context.Context, c Config) (*Stack, error) {
	bins, err := labbuild.Build(ctx, labbuild.Options{ModuleDir: c.ModuleDir, CacheDir: c.CacheDir, Progress: c.Progress})
	if err != nil {
		return nil, err
	}
	cl := filepath.Join(c.Dir, "cluster")
	if err := labcluster.Up(ctx, labcluster.Config{Dir: cl, APIServer: bins.Path("kube-apiserver"),
		ControllerManager: bins.Path("kube-controller-manager"), Progress: c.Progress}); err != nil {
		return nil, err
	}
	kubeconfig := labcluster.Kubeconfig(cl)
	objs, err := istioinstall.Render(c.Istio)
	if err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("lab kubeconfig: %w", err)
	}
	changes, err := istioinstall.Apply(ctx, rc, objs, istioinstall.LabRunnable)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c.Progress, "istio: %d objects rendered from the embedded charts (Istio %s): %s (workloads and webhooks: no kubelet here)\n",
		len(objs), istioinstall.EmbeddedVersion, istioinstall.Summary(changes))
	mesh, err := istioinstall.MeshConfig(objs)
	if err != nil {
		return nil, err
	}
	env, err := istioinstall.IstiodEnv(objs)
	if err != nil {
		return nil, err
	}
	err = meshlab.Up(ctx, meshlab.Config{Dir: filepath.Join(c.Dir, "istio"), Istiod: bins.Path("pilot-discovery"),
		Kubeconfig: kubeconfig, Mesh: mesh, Env: env, ClusterID: c.Istio.ClusterName, Progress: c.Progress})
	if err != nil {
		return nil, err
	}
	return &Stack{Bins: bins, Kubeconfig: kubeconfig}, nil
}

// Down stops istiod, then the control plane; purge also deletes the lab's
// state directory (stop its VMs first: their disks live there).
func Down(ctx context.Context, dir string, purge bool) error {
	err := errors.Join(meshlab.Down(ctx, filepath.Join(dir, "istio")), labcluster.Down(ctx, filepath.Join(dir, "cluster")))
	if purge && err == nil {
		err = os.RemoveAll(dir)
	}
	return err
}
