//! The operator against a real control plane (kube-apiserver, etcd and
//! kube-controller-manager, so that Deployments get ReplicaSets and Pods, and the garbage
//! collector removes owned children). There is no kubelet: [`harness::Kubelet`] marks the pods
//! ready, as one would. The operator runs as a ServiceAccount bound only to
//! `deploy/operator/rbac.yaml`.

mod addons;
mod gate;
mod harness;
mod lifecycle;
mod rotation;
