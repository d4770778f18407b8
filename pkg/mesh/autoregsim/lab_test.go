package autoregsim

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mtls"
)

var recipe = workload.Spec{Namespace: "vmns", ServiceAccount: "vmsa", Group: "external-app", Port: 8000, PortName: "http",
	Network: "vm-network", ProbePath: "/", ProbePort: 8000, ProbePeriod: 1}

// labAPI is the lab's real API server with Istio's resources and no istiod,
// the workload converged on it.
func labAPI(t *testing.T) workload.Clients {
	t.Helper()
	// Its own ports: it needs no VMs nor istiod, so it runs beside the lab tests.
	rc := clustertest.StartIstioAPI(t, cluster.Ports{API: 30443, Etcd: 30444, EtcdPeer: 30445, Controller: 21257})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	c := workload.Clients{Kube: kubernetes.NewForConfigOrDie(rc), Istio: istioclient.NewForConfigOrDie(rc)}
	if _, err := workload.Ensure(ctx, c, recipe); err != nil {
		t.Fatal(err)
	}
	return c
}

func getEntry(t *testing.T, c workload.Clients, name string) *clientnetworking.WorkloadEntry {
	t.Helper()
	we, err := c.Istio.NetworkingV1().WorkloadEntries(recipe.Namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("WorkloadEntry %s: %v", name, err)
	}
	return we
}

// The registration's writes on the real API server, step by step, against
// what istiod's autoregistration writes.
func TestRegistrationOnTheAPIServer(t *testing.T) {
	c := labAPI(t)
	ctx := context.Background()
	d := New(c.Istio, Options{Instance: "istiod-0", Grace: time.Second})
	defer d.Close()
	group, err := c.Istio.NetworkingV1().WorkloadGroups(recipe.Namespace).Get(ctx, recipe.Group, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := Proxy{Namespace: recipe.Namespace, Group: recipe.Group, IP: "10.0.0.7", Network: "vm-network", HealthChecks: true,
		Labels: map[string]string{"service.istio.io/canonical-name": "external-app", "istio-locality": "r/z"}}
	t0 := time.Now()
	name, err := d.Connect(ctx, p, t0)
	if err != nil || name != "external-app-10.0.0.7-vm-network" {
		t.Fatalf("connect: %q %v", name, err)
	}
	we := getEntry(t, c, name)
	wantAnn := map[string]string{GroupAnnotation: recipe.Group, ControllerAnnotation: "istiod-0", ConnectedAnnotation: t0.Format(time.RFC3339Nano), HealthCheckAnnotation: "true"}
	for k, v := range wantAnn {
		if we.Annotations[k] != v {
			t.Errorf("annotation %s=%q, want %q", k, we.Annotations[k], v)
		}
	}
	if len(we.OwnerReferences) != 1 || we.OwnerReferences[0].UID != group.UID || we.OwnerReferences[0].Kind != "WorkloadGroup" ||
		we.OwnerReferences[0].APIVersion != "networking.istio.io/v1" || we.OwnerReferences[0].Controller == nil || !*we.OwnerReferences[0].Controller {
		t.Errorf("owner: %+v, want the WorkloadGroup (uid %s) as controller", we.OwnerReferences, group.UID)
	}
	if we.Spec.GetAddress() != p.IP || we.Spec.GetNetwork() != p.Network || we.Spec.GetServiceAccount() != recipe.ServiceAccount ||
		we.Spec.GetPorts()["http"] != 8000 || we.Spec.GetLabels()["app"] != recipe.Group || we.Spec.GetLabels()["service.istio.io/canonical-name"] != "external-app" {
		t.Errorf("spec: %v", &we.Spec)
	}
	if we.Labels["app"] != recipe.Group || we.Labels["istio-locality"] != "" {
		t.Errorf("labels: %v, want the group's and the proxy's, without istio-locality", we.Labels)
	}
	// The core's reader sees a connected entry with no health yet.
	e, ok, err := workload.FindEntry(ctx, c, recipe, p.IP)
	if err != nil || !ok || e.Name != name || e.ConnectedAt == "" || e.Healthy != "" || e.Controller != "istiod-0" {
		t.Fatalf("FindEntry: %+v %v %v", e, ok, err)
	}

	// Health: a report, an older one ignored, a failure with its message.
	t1 := time.Now()
	if err := d.Health(ctx, p, true, "", t1); err != nil {
		t.Fatal(err)
	}
	if err := d.Health(ctx, p, false, "stale", t1.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := workload.FindEntry(ctx, c, recipe, p.IP); e.Healthy != "True" || e.ProbedAt.Sub(t1).Abs() > time.Millisecond {
		t.Errorf("after a report and an older one: %+v", e)
	}
	if err := d.Health(ctx, p, false, "connection refused", time.Now()); err != nil {
		t.Fatal(err)
	}
	we = getEntry(t, c, name)
	if conds := we.Status.GetConditions(); len(conds) != 1 || conds[0].GetType() != "Healthy" || conds[0].GetStatus() != "False" ||
		conds[0].GetMessage() != "connection refused" || conds[0].GetLastProbeTime() == nil || conds[0].GetLastTransitionTime() == nil {
		t.Errorf("conditions: %v", conds)
	}
	uid := we.UID

	// A reconnect keeps the entry (same UID); an older connect changes nothing.
	t2 := time.Now()
	if _, err := d.Connect(ctx, p, t2); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Connect(ctx, p, t0); err != nil {
		t.Fatal(err)
	}
	we = getEntry(t, c, name)
	if we.UID != uid || we.Annotations[ConnectedAnnotation] != t2.Format(time.RFC3339Nano) {
		t.Errorf("after a reconnect: uid %s (was %s), connectedAt %s", we.UID, uid, we.Annotations[ConnectedAnnotation])
	}
	// Another istiod holds it: this one's health reports are dropped.
	other := New(c.Istio, Options{Instance: "istiod-1"})
	if _, err := other.Connect(ctx, p, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := d.Health(ctx, p, true, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := workload.FindEntry(ctx, c, recipe, p.IP); e.Healthy != "False" || e.Controller != "istiod-1" {
		t.Errorf("health from the istiod that lost the connection: %+v", e)
	}
	// ...and its disconnect leaves the entry to the holder.
	if err := d.Disconnect(ctx, p, t2, time.Now()); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := workload.FindEntry(ctx, c, recipe, p.IP); e.DisconnectedAt != "" {
		t.Errorf("a stale disconnect marked the entry: %+v", e)
	}

	// The holder's disconnect: marked, then deleted after the grace period.
	we = getEntry(t, c, name)
	connected, _ := time.Parse(time.RFC3339Nano, we.Annotations[ConnectedAnnotation])
	other.grace = time.Second
	if err := other.Disconnect(ctx, p, connected, time.Now()); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := workload.FindEntry(ctx, c, recipe, p.IP); e.DisconnectedAt == "" || e.ConnectedAt != "" {
		t.Errorf("after disconnect: %+v", e)
	}
	waitGone(t, c, name)
	other.Close()
}

func waitGone(t *testing.T, c workload.Clients, name string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := c.Istio.NetworkingV1().WorkloadEntries(recipe.Namespace).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WorkloadEntry %s still there after its grace period (%v)", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A pilot-agent reading real workload files: connects when its sidecar
// starts, reports the app's health as it changes, comes back within the
// grace period keeping the entry, and is deleted after it stops.
func TestPilotFromTheVMsFiles(t *testing.T) {
	c := labAPI(t)
	ctx := context.Background()
	ca, err := mtls.NewCA("istiod stand-in root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := PublishRootCert(ctx, c.Kube, recipe.Namespace, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	ip := "127.4.0.9"
	files, err := workload.Files(ctx, c, recipe, workload.FilesFor{ClusterID: "test", VMIP: ip, IstiodIP: "127.0.0.1", VM: "vm1", TokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	vm := map[string][]byte{ClusterEnvPath: files.ClusterEnv, MeshPath: files.Mesh}
	read := func(p string) ([]byte, error) {
		if b, ok := vm[path.Clean(p)]; ok {
			return b, nil
		}
		return nil, os.ErrNotExist
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "8000"))
	if err != nil {
		t.Skipf("no loopback address %s here: %v", ip, err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go app.Serve(lis)
	defer app.Close()

	d := New(c.Istio, Options{Grace: 2 * time.Second})
	defer d.Close()
	errs := make(chan error, 10)
	p := d.Pilot(read, ip, func(err error) { errs <- err })
	p.Sidecar(100)
	e := waitHealth(t, c, ip, "True")
	if e.Name != "external-app-"+ip+"-vm-network" || e.Network != "vm-network" {
		t.Errorf("entry %+v", e)
	}
	app.Close()
	if e = waitHealth(t, c, ip, "False"); e.Message == "" {
		t.Errorf("unhealthy without a message: %+v", e)
	}
	// The sidecar restarts (a new pilot-agent): the same entry, connected anew.
	uid := getEntry(t, c, e.Name).UID
	p.Sidecar(101)
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, _, _ := workload.FindEntry(ctx, c, recipe, ip)
		if cur.ConnectedAt != "" && cur.ConnectedAt != e.ConnectedAt {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new connection after the restart: %+v", cur)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := getEntry(t, c, e.Name).UID; got != uid {
		t.Errorf("a reconnect within the grace period made a new entry (uid %s, was %s)", got, uid)
	}
	p.Close()
	waitGone(t, c, e.Name)
	select {
	case err := <-errs:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("pilot-agent reported %v", err)
		}
	default:
	}
}

func waitHealth(t *testing.T, c workload.Clients, ip, want string) workload.Entry {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		e, _, err := workload.FindEntry(context.Background(), c, recipe, ip)
		if e.Healthy == want && e.ConnectedAt != "" {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry at %s never Healthy=%s: %+v %v", ip, want, e, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
