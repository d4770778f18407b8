package workload

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	networking "istio.io/api/networking/v1alpha3"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/lab/stack"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
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
	t.Cleanup(func() { stack.Down(context.Background(), dir, false) })
	st, err := stack.Up(ctx, stack.Config{ModuleDir: labtest.ModuleDir, CacheDir: cache, Dir: dir, Istio: istioinstall.Options{MeshID: "mesh1", ClusterName: "test", Network: "kube-network"}, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c := Clients{Kube: kubernetes.NewForConfigOrDie(rc), Istio: istioclient.NewForConfigOrDie(rc)}
	first, err := Ensure(ctx, c, recipe)
	wantActions(t, "first Ensure", first, err, "created")
	second, err := Ensure(ctx, c, recipe)
	wantActions(t, "second Ensure", second, err, "unchanged")
	changed := recipe
	changed.ProbePeriod = 10
	third, err := Ensure(ctx, c, changed)
	if a := actions(t, "a changed probe", third, err)[group]; a != "updated" {
		t.Errorf("a changed probe: WorkloadGroup %s, want updated", a)
	}

	files, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", VM: "vm1", TokenLifetime: time.Hour})
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
	again, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", VM: "vm1", TokenLifetime: time.Hour, ReuseToken: files.Token})
	if err != nil || string(again.Token) != string(files.Token) {
		t.Errorf("a fresh token was not reused (%v)", err)
	}
	claims := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"system:serviceaccount:vmns:vmsa","aud":["istio-ca"],"exp":%d}`, time.Now().Add(time.Hour).Unix())))
	forged := []byte("eyJhbGciOiJSUzI1NiJ9." + claims + ".c2lnbmF0dXJl")
	other, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", VM: "vm1", TokenLifetime: time.Hour, ReuseToken: forged})
	if err != nil || string(other.Token) == string(forged) {
		t.Errorf("a token this cluster did not sign was reused (%v)", err)
	}

	// A certificate lifetime reaches the VM's cluster.env as SECRET_TTL,
	// through the WorkloadGroup only.
	short := recipe
	short.CertificateLifetime = 5 * time.Minute
	if ch, err := Ensure(ctx, c, short); actions(t, "a certificate lifetime", ch, err)[group] != "updated" {
		t.Fatalf("a certificate lifetime: %+v, want the WorkloadGroup updated", ch)
	}
	ttl, err := Files(ctx, c, short, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", VM: "vm1", TokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ttlEnv := map[string]string{}
	if err := envfile.Parse("cluster.env", ttl.ClusterEnv, ttlEnv); err != nil || ttlEnv["SECRET_TTL"] != "5m0s" {
		t.Errorf("cluster.env SECRET_TTL %q (%v), want 5m0s", ttlEnv["SECRET_TTL"], err)
	}
	// Every certificate request is made with the token alone (PROV_CERT
	// set but empty), with the CA's root named instead.
	if v, set := ttlEnv["PROV_CERT"]; !set || v != "" || ttlEnv["CA_ROOT_CA"] != "/etc/certs/root-cert.pem" {
		t.Errorf("cluster.env PROV_CERT %q (set %v), CA_ROOT_CA %q: want PROV_CERT empty and the root named", v, set, ttlEnv["CA_ROOT_CA"])
	}
	if ch, err := Ensure(ctx, c, short); actions(t, "the same lifetime again", ch, err)[group] != "unchanged" {
		t.Errorf("the same lifetime again: %+v, want the WorkloadGroup unchanged", ch)
	}
	credentialsOnLab(t, ctx, c, files.Token)
	yoursLeftAlone(t, ctx, c)

	// What meshvm made, Remove deletes, its namespace last.
	gone, err := Remove(ctx, c, recipe)
	wantActions(t, "Remove of meshvm's workload", gone, err, "deleted")
}

// The objects Ensure and Remove handle, by kind: each reports all four.
const (
	namespace      = "Namespace"
	serviceAccount = "ServiceAccount"
	group          = "WorkloadGroup"
	service        = "Service"
)

// actions is each object's action by kind; an error, or a kind missing
// or reported twice, fails the test: an empty list must not pass.
func actions(t *testing.T, what string, chs []Change, err error) map[string]string {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	out := map[string]string{}
	for _, ch := range chs {
		kind, _, _ := strings.Cut(ch.Object, " ")
		if _, dup := out[kind]; dup {
			t.Fatalf("%s: %s reported twice in %+v", what, kind, chs)
		}
		out[kind] = string(ch.Action)
	}
	for _, kind := range []string{namespace, serviceAccount, group, service} {
		if _, ok := out[kind]; !ok || len(out) != 4 {
			t.Fatalf("%s: got %+v, want one change of each of Namespace, ServiceAccount, WorkloadGroup and Service", what, chs)
		}
	}
	return out
}

// wantActions checks that every object's action is want.
func wantActions(t *testing.T, what string, chs []Change, err error, want string) {
	t.Helper()
	for kind, a := range actions(t, what, chs, err) {
		if a != want {
			t.Errorf("%s: %s %s, want %s", what, kind, a, want)
		}
	}
}

// yoursLeftAlone runs Ensure and Remove in a namespace whose objects of the
// workload's names were not made by meshvm: each is used or left as it is,
// byte for byte, and the namespace and what else it holds stay.
func yoursLeftAlone(t *testing.T, ctx context.Context, c Clients) {
	t.Helper()
	spec := recipe
	spec.Namespace = "yours"
	kc := c.Kube.CoreV1()
	mk := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := kc.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "yours", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{})
	mk(err)
	_, err = kc.ConfigMaps("yours").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "theirs"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{})
	mk(err)
	_, err = kc.ServiceAccounts("yours").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: spec.ServiceAccount}}, metav1.CreateOptions{})
	mk(err)
	_, err = kc.Services("yours").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: spec.Group},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "other"}, Ports: []corev1.ServicePort{{Name: "web", Port: 9090}}}}, metav1.CreateOptions{})
	mk(err)
	wg := &clientnetworking.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Name: spec.Group, Namespace: "yours"}}
	wg.Spec.Template = &networking.WorkloadEntry{ServiceAccount: spec.ServiceAccount, Ports: map[string]uint32{"web": 9090}}
	_, err = c.Istio.NetworkingV1().WorkloadGroups("yours").Create(ctx, wg, metav1.CreateOptions{})
	mk(err)

	snapshot := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		add := func(name string, obj any, err error) {
			if err != nil {
				out[name] = "error: " + err.Error()
				return
			}
			b, _ := json.Marshal(obj)
			out[name] = string(b)
		}
		ns, err := kc.Namespaces().Get(ctx, "yours", metav1.GetOptions{})
		add("namespace", ns, err)
		cm, err := kc.ConfigMaps("yours").Get(ctx, "theirs", metav1.GetOptions{})
		add("configmap", cm, err)
		sa, err := kc.ServiceAccounts("yours").Get(ctx, spec.ServiceAccount, metav1.GetOptions{})
		add("serviceaccount", sa, err)
		svc, err := kc.Services("yours").Get(ctx, spec.Group, metav1.GetOptions{})
		add("service", svc, err)
		g, err := c.Istio.NetworkingV1().WorkloadGroups("yours").Get(ctx, spec.Group, metav1.GetOptions{})
		add("workloadgroup", g, err)
		return out
	}
	before := snapshot()
	ensured, err := Ensure(ctx, c, spec)
	wantActions(t, "Ensure among yours", ensured, err, string(ownership.Yours))
	removed, err := Remove(ctx, c, spec)
	wantActions(t, "Remove among yours", removed, err, string(ownership.Yours))
	after := snapshot()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed:\nbefore %s\nafter  %s", k, v, after[k])
		}
	}
}

// credentialsOnLab checks the VM's token is bound to its Secret: reused
// while it is, refused by TokenReview once the Secret is deleted, and
// replaced by one bound to the new Secret afterwards.
func credentialsOnLab(t *testing.T, ctx context.Context, c Clients, token []byte) {
	tok, err := credinfo.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := c.Kube.CoreV1().Secrets("vmns").Get(ctx, CredentialName("vm1"), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the VM's credential Secret: %v", err)
	}
	if tok.BoundSecret.Name != sec.Name || tok.BoundSecret.UID != string(sec.UID) || sec.Labels[ownership.Label] != ownership.Value || sec.Labels[ownership.VMLabel] != "vm1" {
		t.Errorf("token bound to %+v, Secret %s/%s labels %v: want the token bound to the labelled Secret", tok.BoundSecret, sec.Name, sec.UID, sec.Labels)
	}
	if r, err := Review(ctx, c.Kube, token); err != nil || !r.Authenticated {
		t.Fatalf("TokenReview of a fresh bound token: %+v %v", r, err)
	}
	// A 30-day token is issued as asked.
	long, err := IssueToken(ctx, c.Kube, recipe, "vm1", 30*24*time.Hour)
	if err != nil || long.Capped != "" || time.Until(long.ExpiresAt) < 29*24*time.Hour {
		t.Errorf("a 30-day token: expires %s, capped %q, %v", long.ExpiresAt, long.Capped, err)
	}
	// The lab API server caps tokens at 90 days, as a real one may: named.
	capped, err := IssueToken(ctx, c.Kube, recipe, "vm1", 100*24*time.Hour)
	if err != nil || !strings.Contains(capped.Capped, "--service-account-max-token-expiration") {
		t.Errorf("a 100-day token on a 90-day API server: capped %q, %v", capped.Capped, err)
	}

	if a, err := Revoke(ctx, c.Kube, "vmns", "vm1"); err != nil || a != "deleted" {
		t.Fatalf("revoke: %s %v", a, err)
	}
	if a, err := Revoke(ctx, c.Kube, "vmns", "vm1"); err != nil || a != "absent" {
		t.Errorf("revoke again: %s %v, want absent", a, err)
	}
	// The API server checks the bound object at review time; it keeps a
	// successful review for 10 s (its token cache), so refused within that.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := Review(ctx, c.Kube, token)
		if err == nil && !r.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TokenReview of a revoked token after 30 s: %+v %v, want refused", r, err)
		}
		time.Sleep(time.Second)
	}
	again, err := Files(ctx, c, recipe, FilesFor{ClusterID: "test", VMIP: "10.213.0.2", IstiodIP: "10.213.0.1", VM: "vm1", TokenLifetime: time.Hour, ReuseToken: token})
	if err != nil || string(again.Token) == string(token) {
		t.Fatalf("a revoked token was reused (%v)", err)
	}
	if r, err := Review(ctx, c.Kube, again.Token); err != nil || !r.Authenticated {
		t.Errorf("TokenReview of the token issued after revocation: %+v %v", r, err)
	}

	// A Secret of that name meshvm did not create is neither used nor deleted.
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: CredentialName("vm2"), Namespace: "vmns"}}
	if _, err := c.Kube.CoreV1().Secrets("vmns").Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := IssueToken(ctx, c.Kube, recipe, "vm2", time.Hour); err == nil || !strings.Contains(err.Error(), "meshvm did not create it") {
		t.Errorf("token bound to a foreign Secret: %v, want refused", err)
	}
	if _, err := Revoke(ctx, c.Kube, "vmns", "vm2"); err == nil {
		t.Error("revoke deleted a Secret meshvm did not create")
	}
	if _, err := c.Kube.CoreV1().Secrets("vmns").Get(ctx, foreign.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the foreign Secret: %v", err)
	}
	// down's RevokeAll: every credential meshvm made, nothing else.
	if n, err := RevokeAll(ctx, c.Kube, "vmns"); err != nil || n != 1 {
		t.Errorf("RevokeAll: %d %v, want vm1's one credential", n, err)
	}
	if uids, err := CredentialUIDs(ctx, c.Kube, "vmns"); err != nil || len(uids) != 0 {
		t.Errorf("credentials after RevokeAll: %v %v", uids, err)
	}
	if _, err := c.Kube.CoreV1().Secrets("vmns").Get(ctx, foreign.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the foreign Secret after RevokeAll: %v", err)
	}
}
