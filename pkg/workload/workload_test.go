package workload

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/istioinstall"
	"github.com/meshvm/meshvm/pkg/labstack"
	"github.com/meshvm/meshvm/pkg/labtest"
)

var recipe = Spec{Namespace: "vmns", ServiceAccount: "vmsa", Group: "external-app", Port: 8000, PortName: "http",
	Network: "vm-network", ProbePath: "/", ProbePort: 8000, ProbePeriod: 5, ProbeInitialDelay: 1}

// TestEnsureAndFilesOnLab converges the workload on the real lab API server
// with istiod running, twice, and generates the VM's files from it.
func TestEnsureAndFilesOnLab(t *testing.T) {
	labtest.RequireBuild(t)
	cache := labtest.Cache()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	dir := t.TempDir()
	t.Cleanup(func() { labstack.Down(context.Background(), dir, false) })
	st, err := labstack.Up(ctx, labstack.Config{ModuleDir: labtest.ModuleDir, CacheDir: cache, Dir: dir, Istio: istioinstall.Options{MeshID: "mesh1", ClusterName: "test", Network: "kube-network"}, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c := Clients{Kube: kubernetes.NewForConfigOrDie(rc), Istio: istioclient.NewForConfigOrDie(rc)}
	first, err := Ensure(ctx, c, recipe)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range first {
		if ch.Action != "created" {
			t.Errorf("first Ensure: %s %s, want created", ch.Object, ch.Action)
		}
	}
	second, err := Ensure(ctx, c, recipe)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range second {
		if ch.Action != "unchanged" {
			t.Errorf("second Ensure: %s %s, want unchanged", ch.Object, ch.Action)
		}
	}
	changed := recipe
	changed.ProbePeriod = 10
	third, _ := Ensure(ctx, c, changed)
	if third[2].Action != "updated" {
		t.Errorf("a changed probe: got %+v, want the WorkloadGroup updated", third[2])
	}

	files, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", TokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	if err := envfile.Parse("cluster.env", files.ClusterEnv, env); err != nil {
		t.Fatal(err)
	}
	if env["ISTIO_META_AUTO_REGISTER_GROUP"] != "external-app" || env["ISTIO_META_MESH_ID"] != "mesh1" || env["TRUST_DOMAIN"] != "cluster.local" {
		t.Errorf("cluster.env from the cluster: %v", env)
	}
	if strings.Count(string(files.Token), ".") != 2 || !strings.Contains(string(files.RootCert), "BEGIN CERTIFICATE") {
		t.Errorf("token %q or root cert missing", files.Token)
	}

	// A fresh token of this cluster is reused; one another cluster signed
	// (same subject, still valid by its claims) is not.
	again, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", TokenLifetime: time.Hour, ReuseToken: files.Token})
	if err != nil || string(again.Token) != string(files.Token) {
		t.Errorf("a fresh token was not reused (%v)", err)
	}
	claims := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"system:serviceaccount:vmns:vmsa","aud":["istio-ca"],"exp":%d}`, time.Now().Add(time.Hour).Unix())))
	forged := []byte("eyJhbGciOiJSUzI1NiJ9." + claims + ".c2lnbmF0dXJl")
	other, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", TokenLifetime: time.Hour, ReuseToken: forged})
	if err != nil || string(other.Token) == string(forged) {
		t.Errorf("a token this cluster did not sign was reused (%v)", err)
	}
}
