package site

import (
	"context"
	"io"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	labstack "github.com/meshvm/meshvm/lab/stack"
)

// ControllerResync is the lab controller's periodic look at each VM.
const ControllerResync = 30 * time.Second

// StartController runs fleet mode's controller as a process of the lab,
// as istiod runs, built from the checkout the lab builds from; on a
// cluster it is a Deployment (hostctl fleet install).
func (s *labSite) StartController(ctx context.Context, progress io.Writer) error {
	src, err := build.ModuleDir()
	if err != nil {
		return err
	}
	c := labstack.Config{ModuleDir: src, CacheDir: build.DefaultCacheDir(), Dir: s.state.Path("lab"), Progress: progress}
	st := s.stack
	if st == nil {
		bins, err := build.Build(ctx, build.Options{ModuleDir: src, CacheDir: c.CacheDir})
		if err != nil {
			return err
		}
		st = &labstack.Stack{Bins: bins, Kubeconfig: s.Kubeconfig()}
	}
	bin, err := labstack.BuildController(ctx, c)
	if err != nil {
		return err
	}
	_, err = labstack.StartController(ctx, c, st, bin, ControllerResync)
	return err
}
