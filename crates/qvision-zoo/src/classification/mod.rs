//! Classification builders, one file per torchvision family.

pub mod convnext;
pub mod densenet;
pub mod efficientnet;
pub mod googlenet;
pub mod inception;
pub mod mnasnet;
pub mod mobilenet;
pub mod regnet;
pub mod resnet;
pub mod shufflenet;
pub mod squeezenet;
pub mod vgg;
