package crd

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/lab/cluster/clustertest"
)

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	meshvmGVR = schema.GroupVersionResource{Group: "meshvm.io", Version: "v1alpha1", Resource: "meshvms"}
)

// The CRD on the lab's real kube-apiserver: a valid MeshVM is stored with
// its defaults, and each bad spec is refused with a message that names the
// field, by the schema and its CEL rules, before any controller sees it.
func TestSchemaOnTheAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	rc, _ := clustertest.Start(ctx, t)
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	var crd unstructured.Unstructured
	if err := yaml.Unmarshal(MeshVMs, &crd.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Resource(crdGVR).Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the CRD: %v", err)
	}
	// Established: the API server serves the new resource.
	vms := dc.Resource(meshvmGVR).Namespace("default")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := vms.List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshvms never served: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	meshvm := func(name string, spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "meshvm.io/v1alpha1", "kind": "MeshVM",
			"metadata": map[string]any{"name": name}, "spec": spec,
		}}
	}
	got, err := vms.Create(ctx, meshvm("vm1", map[string]any{"address": "10.213.0.2", "workloadGroup": "external-app", "tokenLifetime": "10m", "certificateLifetime": "1m"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a valid MeshVM: %v", err)
	}
	if app, _, _ := unstructured.NestedBool(got.Object, "spec", "app"); !app {
		t.Errorf("spec.app: got %v, want the default true", got.Object["spec"])
	}
	if _, err := vms.Create(ctx, meshvm("vm2", map[string]any{"address": "vm2.example.internal", "workloadGroup": "external-app", "revision": "1-31"}), metav1.CreateOptions{}); err != nil {
		t.Errorf("a MeshVM with a DNS name and a revision: %v", err)
	}

	for _, bad := range []struct {
		spec map[string]any
		want string
	}{
		{map[string]any{"address": "10.0.0.1"}, "spec.workloadGroup: Required value"},
		{map[string]any{"address": "not an address!", "workloadGroup": "g"}, "address must be an IP address or a DNS name"},
		{map[string]any{"workloadGroup": "g", "tokenLifetime": "5m"}, "tokenLifetime must be between 10m"},
		{map[string]any{"workloadGroup": "g", "certificateLifetime": "30s"}, "certificateLifetime must be between 1m"},
		{map[string]any{"workloadGroup": "g", "revision": "Canary_1"}, "spec.revision"},
		{map[string]any{"workloadGroup": "Not A Group"}, "spec.workloadGroup"},
		{map[string]any{"workloadGroup": "g", "tokenLifetime": "soon"}, "spec.tokenLifetime"},
	} {
		_, err := vms.Create(ctx, meshvm("bad", bad.spec), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("spec %v: got %v, want a refusal containing %q", bad.spec, err, bad.want)
		}
	}

	// kubectl get meshvms: the columns a user reads, as the API server
	// serves them in the Table kubectl asks for.
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rc.Host+"/apis/meshvm.io/v1alpha1/namespaces/default/meshvms", nil)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil {
		t.Fatal(err)
	}
	var cols []string
	for _, c := range table.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	if want := "Name Ready Agent Sidecar Healthy Token Expires Revision Address Age"; strings.Join(cols, " ") != want {
		t.Errorf("kubectl get meshvms columns: got %q, want %q", strings.Join(cols, " "), want)
	}
}
