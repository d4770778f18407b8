// Package clustertest gives a test a lab kube-apiserver of its own (the
// CRD's and the fleet store's tests run on it).
package clustertest

import (
	"context"
	"os"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/labtest"
)

// APIServer builds (cached) and starts a lab kube-apiserver of the test's
// own, stopped when the test ends, and returns its client configuration.
func APIServer(t *testing.T, ctx context.Context) *rest.Config {
	t.Helper()
	labtest.RequireBuild(t)
	bins, err := build.Build(ctx, build.Options{ModuleDir: labtest.ModuleDir, CacheDir: labtest.Cache(), Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Cleanup(func() { cluster.Down(context.Background(), dir) })
	if err := cluster.Up(ctx, cluster.Config{Dir: dir, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager")}); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	return rc
}
