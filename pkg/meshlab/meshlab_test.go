package meshlab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labcluster"
	"github.com/meshvm/meshvm/pkg/labtest"
)

// TestIstiodOnLabCluster runs real istiod against the real lab API server:
// the CRDs are established, istiod gets ready, and its namespace controller
// publishes istio-ca-root-cert into a new namespace (what VMs need).
func TestIstiodOnLabCluster(t *testing.T) {
	labtest.RequireBuild(t)
	cache := labtest.Cache()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	const mod = labtest.ModuleDir
	bins, err := labbuild.Build(ctx, labbuild.Options{ModuleDir: mod, CacheDir: cache, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	crds, err := labbuild.IstioCRDs(ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cl := filepath.Join(dir, "cluster")
	t.Cleanup(func() {
		Down(context.Background(), filepath.Join(dir, "istio"))
		labcluster.Down(context.Background(), cl)
	})
	if err := labcluster.Up(ctx, labcluster.Config{Dir: cl, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager")}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: filepath.Join(dir, "istio"), Istiod: bins.Path("pilot-discovery"), Kubeconfig: labcluster.Kubeconfig(cl),
		CRDs: crds, MeshID: "mesh1", ClusterID: "test", Progress: os.Stderr}
	if err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	rc, _ := clientcmd.BuildConfigFromFlags("", labcluster.Kubeconfig(cl))
	kc := kubernetes.NewForConfigOrDie(rc)
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vmns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cm, err := kc.CoreV1().ConfigMaps("vmns").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod never published istio-ca-root-cert in vmns: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var out strings.Builder
	cfg.Progress = &out
	if err := Up(ctx, cfg); err != nil || !strings.Contains(out.String(), "already running") {
		t.Errorf("second Up: %v, said %q; want istiod kept", err, out.String())
	}
}
