package fleetinstall

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// warnings keeps what the API server warns of (Pod Security among them).
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

// The install on the lab's real kube-apiserver (RBAC authorizer, Pod
// Security admission): applied, applied again unchanged; the controller's
// ServiceAccount, impersonated, allowed exactly what it needs and refused
// the rest by the real authorizer, and its real calls (a token Secret, a
// TokenRequest bound to it, revocation) succeed; uninstall refuses while a
// MeshVM remains, then removes only what carries meshvm's mark. The lab has
// no kubelet or containerd: the Deployment is stored and admitted, its
// pods never run (the image load is tested against the ctr stand-in).
func TestInstallOnTheAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	rc, _ := clustertest.Start(ctx, t)
	warned := &warnings{}
	rc.WarningHandler = warned
	kc := kubernetes.NewForConfigOrDie(rc)
	dyn := dynamic.NewForConfigOrDie(rc)

	// The workload as a user made it: nothing of it carries meshvm's mark.
	for _, ns := range []string{"vmns", "istio-system"} {
		mustCreate(t, func() error {
			_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		})
	}
	mustCreate(t, func() error {
		_, err := kc.CoreV1().ServiceAccounts("vmns").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "vmsa"}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := kc.RbacV1().RoleBindings("vmns").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "theirs"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice", APIGroup: rbacv1.GroupName}}}, metav1.CreateOptions{})
		return err
	})

	o := Options{WorkloadNamespaces: []string{"vmns"}, Image: LocalRepo + ":sha-0123456789abcdef", PullPolicy: corev1.PullNever}
	if _, err := Install(ctx, rc, Options{WorkloadNamespaces: []string{"absent"}, Image: o.Image}); err == nil || !strings.Contains(err.Error(), "workload namespace absent does not exist") {
		t.Errorf("install into a missing workload namespace: %v", err)
	}
	start := time.Now()
	changes, err := Install(ctx, rc, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("install: %s in %v", istioinstall.Summary(changes), time.Since(start).Round(time.Millisecond))
	for _, c := range changes {
		if c.Action != "created" {
			t.Errorf("%s: %s, want created", c.Ref, c.Action)
		}
	}
	warned.mu.Lock()
	for _, w := range warned.msgs {
		// The restricted Pod Security level, enforced on the namespace,
		// warns of a Deployment whose pods it would refuse.
		t.Errorf("the API server warned: %s", w)
	}
	warned.mu.Unlock()
	again, err := Install(ctx, rc, o)
	if err != nil {
		t.Fatal(err)
	}
	if s := istioinstall.Summary(again); s != "0 created, 0 configured, 12 unchanged, 0 skipped" {
		t.Errorf("second install: %s, want all unchanged", s)
	}

	// Least privilege, asked of the real authorizer as the controller.
	sa := "system:serviceaccount:" + DefaultNamespace + ":" + Name
	as := rest.CopyConfig(rc)
	as.Impersonate = rest.ImpersonationConfig{UserName: sa}
	akc := kubernetes.NewForConfigOrDie(as)
	type ask struct {
		ns, group, resource, sub, verb string
		allowed                        bool
		name                           string
	}
	var asks []ask
	// grant asks each verb of rules in each namespace of yes (allowed) and
	// of no (refused); a rule limited to a name is also asked of another.
	grant := func(rules []rbacv1.PolicyRule, yes, no []string) {
		for _, r := range rules {
			for _, full := range r.Resources {
				res, sub, _ := strings.Cut(full, "/")
				for _, v := range r.Verbs {
					for _, name := range append(slices.Clone(r.ResourceNames), "") {
						if name != "" {
							asks = append(asks, ask{yes[0], r.APIGroups[0], res, sub, v, true, name}, ask{yes[0], r.APIGroups[0], res, sub, v, false, "someone-elses"})
							break
						}
						for _, ns := range yes {
							asks = append(asks, ask{ns, r.APIGroups[0], res, sub, v, true, ""})
						}
						for _, ns := range no {
							asks = append(asks, ask{ns, r.APIGroups[0], res, sub, v, false, ""})
						}
					}
				}
			}
		}
	}
	grant(ClusterRules(), []string{"team-z", ""}, nil)
	grant(WorkloadRules(), []string{"vmns"}, []string{"team-z"})
	grant(OwnRules(), []string{DefaultNamespace}, nil)
	grant(IstioRules(), []string{"istio-system"}, []string{"kube-system"})
	asks = append(asks,
		ask{"kube-system", "", "secrets", "", "get", false, ""},
		ask{"", "", "secrets", "", "list", false, ""},
		ask{"kube-system", "", "secrets", "", "create", false, ""},
		ask{DefaultNamespace, "", "configmaps", "", "update", false, ""},
		ask{"vmns", "", "configmaps", "", "list", false, ""},
		ask{"vmns", "", "pods", "", "list", false, ""},
		ask{"vmns", "", "pods", "", "create", false, ""},
		ask{"", "", "namespaces", "", "delete", false, ""},
		ask{"vmns", "", "serviceaccounts", "", "create", false, ""},
		ask{"team-z", "", "serviceaccounts", "token", "create", false, ""},
		ask{"vmns", "networking.istio.io", "workloadentries", "", "create", false, ""},
		ask{"vmns", "networking.istio.io", "workloadgroups", "", "delete", false, ""},
		ask{"", "meshvm.io", "meshvms", "", "delete", false, ""},
		ask{"", "meshvm.io", "meshvms", "", "create", false, ""},
		ask{"", "rbac.authorization.k8s.io", "clusterroles", "", "escalate", false, ""},
		ask{"", "rbac.authorization.k8s.io", "clusterrolebindings", "", "create", false, ""},
		ask{"", "", "users", "", "impersonate", false, ""},
		ask{DefaultNamespace, "coordination.k8s.io", "leases", "", "delete", false, ""},
		ask{"kube-system", "coordination.k8s.io", "leases", "", "update", false, ""},
		ask{"", "apps", "deployments", "", "update", false, ""},
		ask{"istio-system", "", "pods", "proxy", "get", false, ""},
		ask{"istio-system", "", "secrets", "", "get", false, ""},
	)
	start = time.Now()
	for _, a := range asks {
		r, err := akc.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: a.ns, Group: a.group, Resource: a.resource, Subresource: a.sub, Verb: a.verb, Name: a.name}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// And the same question put by the admin about the service account.
		sar, err := kc.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: sa, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + DefaultNamespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: a.ns, Group: a.group, Resource: a.resource, Subresource: a.sub, Verb: a.verb, Name: a.name}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != a.allowed || sar.Status.Allowed != a.allowed {
			t.Errorf("%s %s.%s/%s %q in %q: self %v, subject %v (%s); want %v", a.verb, a.resource, a.group, a.sub, a.name, a.ns, r.Status.Allowed, sar.Status.Allowed, sar.Status.Reason, a.allowed)
		}
	}
	t.Logf("%d access reviews, each asked twice, in %v", len(asks), time.Since(start).Round(time.Millisecond))

	// The calls themselves, as the controller makes them.
	sec, err := akc.CoreV1().Secrets("vmns").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "meshvm-vm1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the controller writes a VM's token Secret: %v", err)
	}
	tr, err := akc.CoreV1().ServiceAccounts("vmns").CreateToken(ctx, "vmsa", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"istio-ca"}, BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: sec.Name, UID: sec.UID}}}, metav1.CreateOptions{})
	if err != nil || tr.Status.Token == "" {
		t.Fatalf("the controller mints the VM's token bound to it: %v", err)
	}
	if err := akc.CoreV1().Secrets("vmns").Delete(ctx, sec.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("the controller revokes (deletes the Secret): %v", err)
	}
	for what, err := range map[string]error{
		"read kube-system's Secrets": func() error {
			_, err := akc.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}(),
		"list pods":          func() error { _, err := akc.CoreV1().Pods("vmns").List(ctx, metav1.ListOptions{}); return err }(),
		"delete a namespace": akc.CoreV1().Namespaces().Delete(ctx, "vmns", metav1.DeleteOptions{}),
		"write Secrets in kube-system": func() error {
			_, err := akc.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}(),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("the controller may %s: %v, want Forbidden", what, err)
		}
	}

	// A MeshVM stands: uninstall refuses, naming it.
	vms := dyn.Resource(meshvmGVR).Namespace("vmns")
	vm := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshvm.io/v1alpha1", "kind": "MeshVM",
		"metadata": map[string]any{"name": "vm1"}, "spec": map[string]any{"address": "10.213.0.2", "workloadGroup": "external-app"}}}
	if _, err := vms.Create(ctx, vm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Uninstall(ctx, rc, o, false); err == nil || !strings.Contains(err.Error(), "1 MeshVM(s) remain (vmns/vm1)") {
		t.Errorf("uninstall with a MeshVM: %v", err)
	}
	if err := vms.Delete(ctx, "vm1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The agent CA, as adoption would leave it: the namespace stays for it.
	mustCreate(t, func() error {
		_, err := kc.CoreV1().Secrets(DefaultNamespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "meshvm-agent-ca"}}, metav1.CreateOptions{})
		return err
	})
	start = time.Now()
	removed, err := Uninstall(ctx, rc, Options{}, false) // the RoleBinding in vmns found by its mark
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uninstall: %s in %v", istioinstall.Summary(removed), time.Since(start).Round(time.Millisecond))
	want := map[string]string{
		"Deployment/meshvm-system/meshvm-controller": "deleted", "RoleBinding/vmns/meshvm-controller": "deleted",
		"RoleBinding/meshvm-system/meshvm-controller": "deleted", "Role/meshvm-system/meshvm-controller": "deleted",
		"ClusterRole/meshvm-controller-workload": "deleted", "ClusterRoleBinding/meshvm-controller": "deleted",
		"ClusterRole/meshvm-controller-istio": "deleted", "RoleBinding/istio-system/meshvm-controller": "deleted",
		"ClusterRole/meshvm-controller": "deleted", "ServiceAccount/meshvm-system/meshvm-controller": "deleted",
		"CustomResourceDefinition/meshvms.meshvm.io": "skipped", "Namespace/meshvm-system": "kept",
	}
	for _, c := range removed {
		if want[c.Ref] != string(c.Action) {
			t.Errorf("uninstall %s: %s (%s), want %s", c.Ref, c.Action, c.Why, want[c.Ref])
		}
		delete(want, c.Ref)
	}
	if len(want) > 0 {
		t.Errorf("uninstall did not report %v", want)
	}
	// What meshvm did not create is all there.
	if _, err := kc.CoreV1().Namespaces().Get(ctx, "vmns", metav1.GetOptions{}); err != nil {
		t.Errorf("namespace vmns: %v", err)
	}
	if _, err := kc.CoreV1().ServiceAccounts("vmns").Get(ctx, "vmsa", metav1.GetOptions{}); err != nil {
		t.Errorf("ServiceAccount vmns/vmsa: %v", err)
	}
	if _, err := kc.RbacV1().RoleBindings("vmns").Get(ctx, "theirs", metav1.GetOptions{}); err != nil {
		t.Errorf("RoleBinding vmns/theirs: %v", err)
	}
	if _, err := kc.CoreV1().Secrets(DefaultNamespace).Get(ctx, "meshvm-agent-ca", metav1.GetOptions{}); err != nil {
		t.Errorf("the agent CA Secret: %v", err)
	}
	if _, err := kc.RbacV1().ClusterRoles().Get(ctx, "view", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole view: %v", err)
	}
	for _, name := range []string{Name, WorkloadRole, IstioRole} {
		if _, err := kc.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRole %s after uninstall: %v", name, err)
		}
	}

	// Once the CA is gone, the namespace goes too; a third run finds nothing.
	if err := kc.CoreV1().Secrets(DefaultNamespace).Delete(ctx, "meshvm-agent-ca", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	last, err := Uninstall(ctx, rc, Options{WorkloadNamespaces: []string{"vmns"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if s := istioinstall.Summary(last); s != "1 deleted, 10 absent, 0 kept, 1 skipped" {
		t.Errorf("uninstall again: %s, want only the namespace deleted", s)
	}
}

func mustCreate(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}
