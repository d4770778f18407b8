package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

var (
	// SchemeBuilder adds the MeshVM kinds to a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &MeshVM{}, &MeshVMList{})
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})
	AddToScheme = SchemeBuilder.AddToScheme
)

// Annotations and the finalizer fleet mode puts on MeshVMs.
const (
	// AnnotationIstiodAddress is where this VM reaches istiod, when it is
	// its own (the lab's VMs each reach it on their link's host end); the
	// fleet settings' istiodAddress otherwise.
	AnnotationIstiodAddress = "meshvm.io/istiod-address"
	// Finalizer holds a deleted MeshVM until its token is revoked, its
	// WorkloadEntry deleted and its agent's changes undone.
	Finalizer = "meshvm.io/cleanup"
	// AnnotationRenew asks the controller to replace the VM's token now
	// (hostctl vm renew --force); AnnotationOnboard to issue a fresh token
	// and deliver the files again (hostctl vm onboard). Each new value is
	// acted on once, and recorded in the status (renewRequest,
	// onboardRequest).
	AnnotationRenew   = "meshvm.io/renew"
	AnnotationOnboard = "meshvm.io/onboard"
	// OnboardRestart ends a meshvm.io/onboard value that also asks for the
	// sidecar restarted (hostctl vm onboard --restart), even when nothing
	// it reads at start changed.
	OnboardRestart = "/restart"
)
