package fleetinstall

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/reason"
)

// Install server-side applies the rendered install (objects of someone
// else's with the same names are left as they are, and said so). The
// workload namespaces must exist: they are the workload's (hostctl up
// makes them), not the install's.
func Install(ctx context.Context, rc *rest.Config, o Options) ([]istioinstall.Change, error) {
	if o.Image == "" {
		return nil, fmt.Errorf("no controller image to run")
	}
	objs, err := Render(o)
	if err != nil {
		return nil, err
	}
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	o = o.withDefaults()
	for _, ns := range append([]string{o.IstioNamespace}, o.WorkloadNamespaces...) {
		if _, err := kc.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			what := "workload namespace " + ns
			if ns == o.IstioNamespace {
				what = "Istio's namespace " + ns
			}
			return nil, reason.Wrap(fmt.Errorf("%s does not exist", what), reason.WorkloadNotUp)
		} else if err != nil {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	return istioinstall.Apply(ctx, rc, objs, istioinstall.Everything)
}

var meshvmGVR = schema.GroupVersionResource{Group: "meshvm.io", Version: "v1alpha1", Resource: "meshvms"}

// KeptCRD is why uninstall leaves the MeshVM CRD.
const KeptCRD = "kept: deleting it would delete every MeshVM in the cluster"

// Uninstall deletes the install's objects that carry meshvm's mark, the
// Deployment first, and the RoleBindings in every namespace it finds them
// (not only o's). It keeps the MeshVM CRD (deleting it deletes every
// MeshVM) and the namespace while it holds Secrets (the agent CA: without
// it no one can reach the VMs' agents). While MeshVMs exist it refuses,
// naming them, unless force: their finalizers need the controller.
func Uninstall(ctx context.Context, rc *rest.Config, o Options, force bool) ([]istioinstall.Change, error) {
	o = o.withDefaults()
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	vms, err := dyn.Resource(meshvmGVR).List(ctx, metav1.ListOptions{})
	switch {
	case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("list MeshVMs: %w", err)
	case len(vms.Items) > 0 && !force:
		var names []string
		for _, v := range vms.Items {
			names = append(names, v.GetNamespace()+"/"+v.GetName())
		}
		if len(names) > 5 {
			names = append(names[:5], "...")
		}
		return nil, reason.Wrap(fmt.Errorf("%d MeshVM(s) remain (%s): the controller removes their VMs from the mesh on delete",
			len(vms.Items), strings.Join(names, ", ")), reason.MeshVMsRemain)
	}
	// Every RoleBinding of the install, wherever a config once put one.
	sel := labels.SelectorFromSet(Labels()).String()
	rbs, err := kc.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list the install's RoleBindings: %w", err)
	}
	for _, rb := range rbs.Items {
		if rb.Name == Name && rb.Namespace != o.Namespace && rb.Namespace != o.IstioNamespace && !slices.Contains(o.WorkloadNamespaces, rb.Namespace) {
			o.WorkloadNamespaces = append(o.WorkloadNamespaces, rb.Namespace)
		}
	}
	objs, err := Render(o)
	if err != nil {
		return nil, err
	}
	var ns istioinstall.Object
	out, err := istioinstall.Uninstall(ctx, rc, objs, func(obj istioinstall.Object) (bool, string) {
		switch obj.GetKind() {
		case "CustomResourceDefinition":
			return false, KeptCRD
		case "Namespace":
			ns = obj
			return false, "" // decided below, once what is in it is gone
		}
		return true, ""
	})
	// Uninstall reports the namespace last (it goes newest first).
	if len(out) > 0 && out[len(out)-1].Ref == ns.Ref() {
		out = out[:len(out)-1]
	}
	if err != nil {
		return out, err
	}
	secrets, err := kc.CoreV1().Secrets(o.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return out, fmt.Errorf("list Secrets in %s: %w", o.Namespace, err)
	}
	if err == nil && len(secrets.Items) > 0 {
		return append(out, istioinstall.Change{Ref: ns.Ref(), Action: ownership.Kept,
			Why: fmt.Sprintf("it holds %d Secret(s) (the agent CA, the controller's identity): without them no one reaches the VMs' agents; kubectl delete namespace %s once none needs them", len(secrets.Items), o.Namespace)}), nil
	}
	last, err := istioinstall.Uninstall(ctx, rc, []istioinstall.Object{ns}, istioinstall.Everything)
	return append(out, last...), err
}

// WaitAvailable waits until every replica of the controller's Deployment
// runs the current template and is available, reporting each new state.
// A pod that cannot get its image (ErrImageNeverPull: a node the image was
// not loaded into) fails at once, naming the node, instead of at the
// deadline.
func WaitAvailable(ctx context.Context, kc kubernetes.Interface, namespace string, report func(string)) error {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	last := ""
	for {
		state, done, err := rollout(ctx, kc, namespace)
		if err != nil || done {
			return err
		}
		if state != last {
			report(state)
			last = state
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the controller is not available: %s: %w (kubectl -n %s describe pods -l %s=%s shows why)", last, ctx.Err(), namespace, nameLabel, Name)
		case <-time.After(2 * time.Second):
		}
	}
}

// rollout is kubectl rollout status's judgement, with the pods' reasons.
func rollout(ctx context.Context, kc kubernetes.Interface, namespace string) (string, bool, error) {
	d, err := kc.AppsV1().Deployments(namespace).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		return "", false, fmt.Errorf("the controller's Deployment %s/%s: %w", namespace, Name, err)
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	if s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want {
		return "", true, nil
	}
	state := fmt.Sprintf("Deployment %s/%s: %d/%d updated, %d available", namespace, Name, s.UpdatedReplicas, want, s.AvailableReplicas)
	pods, err := kc.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: nameLabel + "=" + Name})
	if err != nil {
		return state, false, nil
	}
	var why []string
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			w := c.State.Waiting
			if w == nil || w.Reason == "" || w.Reason == "ContainerCreating" {
				continue
			}
			if w.Reason == "ErrImageNeverPull" {
				return state, false, reason.Wrap(fmt.Errorf("pod %s on node %s: the controller image is not in that node's containerd", p.Name, p.Spec.NodeName), reason.ImageNotOnNode)
			}
			why = append(why, fmt.Sprintf("pod %s: %s", p.Name, w.Reason))
		}
		if p.Status.Phase == corev1.PodPending && len(p.Status.ContainerStatuses) == 0 {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
					why = append(why, fmt.Sprintf("pod %s: unschedulable: %s", p.Name, c.Message))
				}
			}
		}
	}
	if len(why) > 0 {
		state += " (" + strings.Join(why, "; ") + ")"
	}
	return state, false, nil
}
