// Package labstack brings up the lab's control plane in order: the
// binaries (built from source, cached), the Kubernetes control plane, then
// Istio's CRDs and istiod. It is the lab's cluster provider; hostctl's
// steps and the end-to-end tests both go through it.
package labstack

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labcluster"
	"github.com/meshvm/meshvm/pkg/meshlab"
)

// Config says where things are and what the mesh is called.
type Config struct {
	// ModuleDir is hostctl/labbuild; CacheDir keeps the built binaries.
	ModuleDir, CacheDir string
	// Dir keeps the running control plane's state.
	Dir               string
	MeshID, ClusterID string
	Progress          io.Writer
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
	crds, err := labbuild.IstioCRDs(ctx, c.ModuleDir)
	if err != nil {
		return nil, err
	}
	err = meshlab.Up(ctx, meshlab.Config{Dir: filepath.Join(c.Dir, "istio"), Istiod: bins.Path("pilot-discovery"),
		Kubeconfig: labcluster.Kubeconfig(cl), CRDs: crds, MeshID: c.MeshID, ClusterID: c.ClusterID, Progress: c.Progress})
	if err != nil {
		return nil, err
	}
	return &Stack{Bins: bins, Kubeconfig: labcluster.Kubeconfig(cl)}, nil
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
