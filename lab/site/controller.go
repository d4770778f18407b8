package site

import (
	"context"
	"io"
	"path/filepath"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	labstack "github.com/meshvm/meshvm/lab/stack"
)

// ControllerResync is the lab controller's periodic look at each VM.
const ControllerResync = 30 * time.Second

// StartController runs fleet mode's controller as a process of the lab,
// as istiod runs, built from the checkout the lab builds from; on a
// cluster it is a Deployment (hostctl fleet install).
func (s *labSite) StartController(ctx context.Context, progress io.Writer) error {
	_, err := startController(ctx, s.state.Path("lab"), s.stack, labstack.ControllerOptions{Resync: ControllerResync}, progress)
	return err
}

// StartControllers runs the controller of the lab in labDir (a state
// directory's lab) as o asks: a failover test's replicas with short
// leases. What hostctl up runs is one replica with the controller's
// timing; its next run puts that back.
func StartControllers(ctx context.Context, labDir string, o labstack.ControllerOptions, progress io.Writer) ([]labstack.Replica, error) {
	return startController(ctx, labDir, nil, o, progress)
}

func startController(ctx context.Context, labDir string, st *labstack.Stack, o labstack.ControllerOptions, progress io.Writer) ([]labstack.Replica, error) {
	src, err := build.ModuleDir()
	if err != nil {
		return nil, err
	}
	c := labstack.Config{ModuleDir: src, CacheDir: build.DefaultCacheDir(), Dir: labDir, Progress: progress}
	if st == nil {
		bins, err := build.Build(ctx, build.Options{ModuleDir: src, CacheDir: c.CacheDir})
		if err != nil {
			return nil, err
		}
		st = &labstack.Stack{Bins: bins, Kubeconfig: cluster.Kubeconfig(filepath.Join(labDir, "cluster"))}
	}
	bin, err := labstack.BuildController(ctx, c)
	if err != nil {
		return nil, err
	}
	if o.Resync == 0 {
		o.Resync = ControllerResync
	}
	return labstack.StartController(ctx, c, st, bin, o)
}
