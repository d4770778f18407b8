// Package meshlab runs what the lab can run of Istio: the CRDs (server-side
// apply), the istio-system namespace, the mesh ConfigMap, and istiod
// (pilot-discovery built from source) as a local process with VM
// autoregistration and health checks on. There is no kubelet in the lab, so
// no istiod Deployment and no gateways: VMs reach istiod directly on the
// host's address (the single-network VM case).
package meshlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/pkg/procs"
)

// Config describes the lab's Istio.
type Config struct {
	// Dir holds istiod's working directory, log and PID.
	Dir string
	// Istiod is the pilot-discovery binary; Kubeconfig the lab admin's.
	Istiod, Kubeconfig string
	// CRDs is Istio's crd-all.gen.yaml.
	CRDs []byte
	// MeshID and ClusterID are the mesh and cluster names.
	MeshID, ClusterID string
	// HostIPs are the host addresses VMs reach istiod on; istiod's serving
	// certificate names them.
	HostIPs  []string
	Progress io.Writer
}

const (
	namespace = "istio-system"
	httpAddr  = "127.0.0.1:18080"
	// FieldManager names meshvm's server-side applies.
	FieldManager = "meshvm"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// MeshConfig is the mesh configuration the lab's istiod and VMs share.
func MeshConfig(meshID string) string {
	return fmt.Sprintf(`trustDomain: cluster.local
rootNamespace: %[1]s
defaultConfig:
  discoveryAddress: istiod.%[1]s.svc:15012
  meshId: %[2]s
  proxyMetadata: {}
`, namespace, meshID)
}

// Up applies the CRDs and configuration and starts istiod unless it runs.
func Up(ctx context.Context, c Config) error {
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("lab kubeconfig: %w", err)
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(rc)
	if err != nil {
		return err
	}
	n, err := applyCRDs(ctx, dc, c.CRDs)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: %d CRDs applied\n", n)
	if err := ensureConfig(ctx, kc, MeshConfig(c.MeshID)); err != nil {
		return err
	}
	return startIstiod(ctx, c)
}

// applyCRDs server-side applies every CRD in the multi-document YAML.
func applyCRDs(ctx context.Context, dc dynamic.Interface, crds []byte) (int, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(crds), 4096)
	n := 0
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, fmt.Errorf("istio CRDs: %w", err)
		}
		if obj.GetKind() != "CustomResourceDefinition" {
			continue
		}
		_, err := dc.Resource(crdGVR).Apply(ctx, obj.GetName(), &obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			return n, fmt.Errorf("apply CRD %s: %w", obj.GetName(), err)
		}
		n++
	}
}

func ensureConfig(ctx context.Context, kc kubernetes.Interface, mesh string) error {
	_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", namespace, err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: namespace}, Data: map[string]string{"mesh": mesh}}
	cur, err := kc.CoreV1().ConfigMaps(namespace).Get(ctx, "istio", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = kc.CoreV1().ConfigMaps(namespace).Create(ctx, cm, metav1.CreateOptions{})
	case err == nil && cur.Data["mesh"] != mesh:
		cur.Data = cm.Data
		_, err = kc.CoreV1().ConfigMaps(namespace).Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("mesh ConfigMap: %w", err)
	}
	return nil
}

func istiodReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/ready", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/ready: %s", resp.Status)
	}
	return nil
}

// startIstiod runs pilot-discovery with a scratch working directory: it reads
// the mesh from ./etc/istio/config/mesh and keeps its files under ./var.
func startIstiod(ctx context.Context, c Config) error {
	pd := procs.Dir(c.Dir)
	const name = "pilot-discovery"
	if pid, ok := pd.Running(name); ok && istiodReady(ctx) == nil {
		fmt.Fprintf(c.Progress, "istio: istiod already running (pid %d)\n", pid)
		return nil
	}
	work := filepath.Join(c.Dir, "istiod")
	meshFile := filepath.Join(work, "etc/istio/config/mesh")
	if err := os.MkdirAll(filepath.Dir(meshFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(meshFile, []byte(MeshConfig(c.MeshID)), 0o600); err != nil {
		return err
	}
	hosts := append([]string{"istiod." + namespace + ".svc", "localhost"}, c.HostIPs...)
	start := time.Now()
	pid, err := pd.Start(procs.Spec{
		Name: name, Bin: c.Istiod, Cwd: work,
		Args: []string{"discovery", "--kubeconfig", c.Kubeconfig, "--meshConfig", "./etc/istio/config/mesh",
			"--clusterID", c.ClusterID, "--domain", "cluster.local", "--httpAddr", httpAddr, "--monitoringAddr", "127.0.0.1:15014"},
		Env: []string{"POD_NAMESPACE=" + namespace, "POD_NAME=istiod-lab", "REVISION=default", "CLUSTER_ID=" + c.ClusterID,
			"PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION=true", "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS=true",
			"ISTIOD_CUSTOM_HOST=" + strings.Join(hosts, ","), "JWT_POLICY=third-party-jwt", "PILOT_CERT_PROVIDER=istiod"},
	})
	if err != nil {
		return err
	}
	if err := pd.WaitReady(ctx, name, pid, 90*time.Second, istiodReady); err != nil {
		return err
	}
	fmt.Fprintf(c.Progress, "istio: istiod ready (pid %d, %s)\n", pid, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// Down stops istiod.
func Down(ctx context.Context, dir string) error {
	return procs.Dir(dir).Stop(ctx, "pilot-discovery", 10*time.Second)
}
