// Package clustertest starts the lab's control plane (kube-apiserver,
// kube-controller-manager, etcd) for a test that needs a real API server
// and nothing else, and stops it when the test ends.
package clustertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// Start skips unless MESHVM_LAB_BUILD is set, builds the control plane (or
// takes it from the cache), starts it in a directory of the test's, and
// returns the admin's REST config and kubeconfig path.
func Start(ctx context.Context, t *testing.T) (*rest.Config, string) {
	t.Helper()
	labtest.RequireBuild(t)
	bins, err := build.Build(ctx, build.Options{ModuleDir: labtest.ModuleDir, CacheDir: labtest.Cache(), Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	t.Cleanup(func() { cluster.Down(context.Background(), dir) })
	if err := cluster.Up(ctx, cluster.Config{Dir: dir, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager")}); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	return rc, cluster.Kubeconfig(dir)
}

// StartIstioAPI is the lab's control plane with Istio's resources applied
// and no istiod (stack.InstallIstioAPI), for a test that stands in for
// istiod's writes; ports keep it apart from the lab tests' instances.
// It skips unless MESHVM_LAB_BUILD is set and returns the admin's REST
// config.
func StartIstioAPI(t *testing.T, ports cluster.Ports) *rest.Config {
	t.Helper()
	labtest.RequireBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir := t.TempDir()
	t.Cleanup(func() { stack.Down(context.Background(), dir, false) })
	cfg := stack.Config{ModuleDir: labtest.ModuleDir, CacheDir: labtest.Cache(), Dir: dir, Progress: os.Stderr,
		Istio: istioinstall.Options{MeshID: "mesh1", ClusterName: "test", Network: "kube-network"}, Ports: ports}
	st, err := stack.UpCluster(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.InstallIstioAPI(ctx, cfg, st); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}
