package fleetinstall

import (
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/api/meshvm/crd"
	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// Names of what the install creates.
const (
	// DefaultNamespace holds the controller, its Lease and the Secrets it
	// reads (the agent CA, its client identity).
	DefaultNamespace = "meshvm-system"
	// Name is the controller's ServiceAccount, Deployment, Role and
	// bindings, and its cluster-wide ClusterRole.
	Name = "meshvm-controller"
	// WorkloadRole is the ClusterRole bound, by a RoleBinding, in each
	// namespace whose MeshVMs the controller serves: what it may do there.
	WorkloadRole = "meshvm-controller-workload"
	// IstioRole is the ClusterRole bound, by a RoleBinding, in Istio's
	// namespace: what the VMs' files are made from.
	IstioRole = "meshvm-controller-istio"
	// DefaultIstioNamespace is where istiod and its mesh config live.
	DefaultIstioNamespace = "istio-system"
	// Component names the install's objects in istioinstall's terms.
	Component = "fleet"
	// ComponentLabel marks every object of the install, beside meshvm's mark.
	ComponentLabel = "app.kubernetes.io/component"
	nameLabel      = "app.kubernetes.io/name"
	// HealthPort and MetricsPort are the controller's probe and metrics ports.
	HealthPort  = 8081
	MetricsPort = 8080
)

// Options are what the rendering depends on.
type Options struct {
	// Namespace is the controller's own; DefaultNamespace when empty.
	Namespace string
	// WorkloadNamespaces are where MeshVMs, their token Secrets and the
	// VMs' service accounts live (workload.namespace): the controller may
	// write Secrets and mint tokens there and nowhere else.
	WorkloadNamespaces []string
	// IstioNamespace is istiod's; DefaultIstioNamespace when empty.
	IstioNamespace string
	// Image is the reference the Deployment runs.
	Image string
	// PullPolicy is Never for an image loaded into the nodes (no registry
	// has it), IfNotPresent for one pushed (pinned by digest).
	PullPolicy corev1.PullPolicy
	// Replicas defaults to 2: one leads, one waits to take over.
	Replicas int32
}

// The controller's memory, from make bench-fleet: 223 MiB at rest with
// 1,000 VMs, 620 MiB with 5,000 declared and under half their streams open.
// The request covers a thousand VMs; the limit a few thousand.
const (
	memoryRequest = "256Mi"
	memoryLimit   = "1Gi"
	memoryGoal    = "900MiB" // GOMEMLIMIT: a tenth below the limit
)

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Replicas == 0 {
		o.Replicas = 2
	}
	if o.IstioNamespace == "" {
		o.IstioNamespace = DefaultIstioNamespace
	}
	if o.PullPolicy == "" {
		o.PullPolicy = corev1.PullIfNotPresent
	}
	return o
}

func (o Options) validate() error {
	for _, ns := range append([]string{o.Namespace, o.IstioNamespace}, o.WorkloadNamespaces...) {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("namespace %q: %s", ns, errs[0])
		}
	}
	if len(o.WorkloadNamespaces) == 0 {
		return fmt.Errorf("no workload namespace: the controller needs the namespace its MeshVMs live in (workload.namespace)")
	}
	for _, ns := range []string{o.Namespace, o.IstioNamespace} {
		if slices.Contains(o.WorkloadNamespaces, ns) {
			return fmt.Errorf("namespace %s is the controller's or Istio's: keep VMs' workloads in another (workload.namespace)", ns)
		}
	}
	return nil
}

// Labels are on every object of the install.
func Labels() map[string]string {
	return ownership.Labels(map[string]string{ComponentLabel: Component, "app.kubernetes.io/part-of": "meshvm"})
}

// ClusterRules are what the controller may do in every namespace: read
// MeshVMs and write their status and finalizers, watch Istio's
// WorkloadEntries and WorkloadGroups, and review a VM's token (whether it
// can be kept). Nothing here reads a Secret.
func ClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"meshvm.io"}, Resources: []string{"meshvms"}, Verbs: []string{"get", "list", "watch", "update", "patch"}},
		{APIGroups: []string{"meshvm.io"}, Resources: []string{"meshvms/status"}, Verbs: []string{"get", "update", "patch"}},
		// Setting an owner reference that blocks the MeshVM's deletion
		// (the per-VM Secret's) needs this where OwnerReferencesPermissionEnforcement runs.
		{APIGroups: []string{"meshvm.io"}, Resources: []string{"meshvms/finalizers"}, Verbs: []string{"update"}},
		{APIGroups: []string{"networking.istio.io"}, Resources: []string{"workloadentries", "workloadgroups"}, Verbs: []string{"get", "list", "watch"}},
	}
}

// WorkloadRules are what it may do in each workload namespace: the per-VM
// token Secrets (written, and deleted to revoke a token), tokens for the
// VMs' service account, the mesh's root certificate (ConfigMap
// istio-ca-root-cert, watched: a list limited to that name, no other
// ConfigMap), deleting the WorkloadEntries it owns, and Events.
func WorkloadRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{RootCertConfigMap}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
		{APIGroups: []string{"networking.istio.io"}, Resources: []string{"workloadentries"}, Verbs: []string{"delete"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
}

// RootCertConfigMap is where istiod publishes the mesh's root certificate
// in each namespace.
const RootCertConfigMap = "istio-ca-root-cert"

// IstioRules are what it may read in Istio's namespace: the mesh config
// (ConfigMap istio or istio-REV, one per revision: watched, so the
// namespace's ConfigMaps are listed) the VMs' files are made from, and
// istiod's Deployment (its version, where the fleet settings name none).
// Not pods/proxy: istiod's image names its version well enough.
func IstioRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get"}},
	}
}

// LeaseName is the controller's leader-election Lease: the only Lease it
// may read or renew.
const LeaseName = v1alpha1.ControllerLease

// OwnRules are what it may do in its own namespace: the Secrets of the
// fleet store (the agent CA, its client identity, one record per VM),
// read the fleet settings ConfigMap, hold its leader-election Lease (a
// create cannot be limited to a name; a read or renewal can), and record
// Events (leader election's among them).
func OwnRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{LeaseName}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
}

// Render is the install, in the order it is applied: the namespace, the
// MeshVM CRD, the ServiceAccount, RBAC, then the Deployment.
func Render(o Options) ([]istioinstall.Object, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	meta := func(name, ns string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: Labels()}
	}
	sa := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: o.Namespace}
	roleRef := func(kind, name string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
	}
	nsMeta := meta(o.Namespace, "")
	// The pod below meets the restricted Pod Security Standard: say so,
	// and have the API server refuse anything less in this namespace.
	nsMeta.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	typed := []runtime.Object{
		&corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"), ObjectMeta: nsMeta},
		&corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"), ObjectMeta: meta(Name, o.Namespace)},
		&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: meta(Name, ""), Rules: ClusterRules()},
		&rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"), ObjectMeta: meta(Name, ""),
			Subjects: []rbacv1.Subject{sa}, RoleRef: roleRef("ClusterRole", Name)},
		&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: meta(WorkloadRole, ""), Rules: WorkloadRules()},
		&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: meta(IstioRole, ""), Rules: IstioRules()},
		&rbacv1.Role{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "Role"), ObjectMeta: meta(Name, o.Namespace), Rules: OwnRules()},
		&rbacv1.RoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"), ObjectMeta: meta(Name, o.Namespace),
			Subjects: []rbacv1.Subject{sa}, RoleRef: roleRef("Role", Name)},
	}
	typed = append(typed, &rbacv1.RoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"), ObjectMeta: meta(Name, o.IstioNamespace),
		Subjects: []rbacv1.Subject{sa}, RoleRef: roleRef("ClusterRole", IstioRole)})
	for _, ns := range o.WorkloadNamespaces {
		typed = append(typed, &rbacv1.RoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"), ObjectMeta: meta(Name, ns),
			Subjects: []rbacv1.Subject{sa}, RoleRef: roleRef("ClusterRole", WorkloadRole)})
	}
	typed = append(typed, deployment(o, meta(Name, o.Namespace)))

	var out []istioinstall.Object
	for _, t := range typed {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(t)
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{Object: m}
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(u.Object, "status")
		out = append(out, istioinstall.Object{Component: Component, Unstructured: u})
	}
	c, err := CRD()
	if err != nil {
		return nil, err
	}
	// The CRD goes right after the namespace, as Apply orders them anyway.
	return slices.Insert(out, 1, c), nil
}

// CRD is the MeshVM CustomResourceDefinition controller-gen wrote, with
// meshvm's mark.
func CRD() (istioinstall.Object, error) {
	var u unstructured.Unstructured
	if err := yaml.Unmarshal(crd.MeshVMs, &u.Object); err != nil {
		return istioinstall.Object{}, fmt.Errorf("the embedded MeshVM CRD: %w", err)
	}
	l := u.GetLabels()
	if l == nil {
		l = map[string]string{}
	}
	for k, v := range Labels() {
		l[k] = v
	}
	u.SetLabels(l)
	return istioinstall.Object{Component: Component, Unstructured: &u}, nil
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

func deployment(o Options, m metav1.ObjectMeta) *appsv1.Deployment {
	selector := map[string]string{nameLabel: Name}
	podLabels := Labels()
	podLabels[nameLabel] = Name
	m.Labels[nameLabel] = Name
	yes, no := true, false
	probe := func(path string, delay int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("health")}},
			InitialDelaySeconds: delay, PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3,
		}
	}
	uid, gid := int64(UID), int64(GID)
	grace := int64(10)
	return &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: m,
		Spec: appsv1.DeploymentSpec{
			Replicas: &o.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName:            Name,
					TerminationGracePeriodSeconds: &grace,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: &yes, RunAsUser: &uid, RunAsGroup: &gid,
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					// Replicas on different nodes where there are several:
					// a node lost does not take the leader and its standby.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector: &metav1.LabelSelector{MatchLabels: selector},
					}},
					Containers: []corev1.Container{{
						Name:            "controller",
						Image:           o.Image,
						ImagePullPolicy: o.PullPolicy,
						Args: []string{
							"--namespace=" + o.Namespace,
							"--istio-namespace=" + o.IstioNamespace,
							"--workload-namespaces=" + strings.Join(o.WorkloadNamespaces, ","),
							"--leader-elect=true",
							fmt.Sprintf("--metrics-bind-address=:%d", MetricsPort),
							fmt.Sprintf("--health-probe-bind-address=:%d", HealthPort),
						},
						Env: []corev1.EnvVar{{
							// The Go runtime collects harder before the limit
							// kills it, with room left for what is not Go heap.
							Name: "GOMEMLIMIT", Value: memoryGoal,
						}},
						Ports: []corev1.ContainerPort{
							{Name: "metrics", ContainerPort: MetricsPort, Protocol: corev1.ProtocolTCP},
							{Name: "health", ContainerPort: HealthPort, Protocol: corev1.ProtocolTCP},
						},
						LivenessProbe:  probe("/healthz", 15),
						ReadinessProbe: probe("/readyz", 5),
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse(memoryRequest)},
							Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse(memoryLimit)},
						},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: &yes, Privileged: &no, AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes,
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}},
					}},
					Volumes: []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr(resource.MustParse("2Gi"))}}}},
				},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }
