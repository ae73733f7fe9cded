//! The list of models, their default eval transforms and their builders.

use crate::{classification, Model, ModelOptions, Weights, ZooError};
use qvision_graph::{weights, Graph};

/// What a model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Classification,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Classification => "classification",
        }
    }
}

/// Resampling filter of the eval resize, as torchvision's `InterpolationMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

/// torchvision's `ImageClassification` eval transform: resize the short side, center crop,
/// scale to [0, 1], normalise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    pub resize: usize,
    pub crop: usize,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const fn t(
    resize: usize,
    crop: usize,
    interpolation: Interpolation,
    mean: [f32; 3],
    std: [f32; 3],
) -> Transform {
    Transform {
        resize,
        crop,
        interpolation,
        mean,
        std,
    }
}

/// One zoo entry.
pub struct ModelInfo {
    pub name: &'static str,
    /// torchvision's class name for the family (`ResNet`, `RegNet`, …).
    pub family: &'static str,
    pub task: Task,
    /// Transform of torchvision's DEFAULT weights for this model.
    pub transform: Transform,
    /// The torchvision weights enum those transforms come from.
    pub default_weights: &'static str,
    builder: fn(&str, &ModelOptions) -> Graph,
}

impl std::fmt::Debug for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelInfo({})", self.name)
    }
}

impl ModelInfo {
    /// The graph with empty parameters (for listing, counting, or loading later).
    pub fn graph(&self, opts: &ModelOptions) -> Graph {
        (self.builder)(self.name, opts)
    }

    /// Default input shape `[1, 3, crop, crop]`.
    pub fn input_shape(&self) -> Vec<usize> {
        vec![1, 3, self.transform.crop, self.transform.crop]
    }
}

const fn info(
    name: &'static str,
    family: &'static str,
    builder: fn(&str, &ModelOptions) -> Graph,
    transform: Transform,
    default_weights: &'static str,
) -> ModelInfo {
    ModelInfo {
        name,
        family,
        task: Task::Classification,
        transform,
        default_weights,
        builder,
    }
}

static MODELS: &[ModelInfo] = &[
    info(
        "resnet18",
        "ResNet",
        classification::resnet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNet18_Weights.IMAGENET1K_V1",
    ),
    info(
        "resnet34",
        "ResNet",
        classification::resnet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNet34_Weights.IMAGENET1K_V1",
    ),
    info(
        "resnet50",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNet50_Weights.IMAGENET1K_V2",
    ),
    info(
        "resnet101",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNet101_Weights.IMAGENET1K_V2",
    ),
    info(
        "resnet152",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNet152_Weights.IMAGENET1K_V2",
    ),
    info(
        "resnext50_32x4d",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
    ),
    info(
        "resnext101_32x8d",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
    ),
    info(
        "resnext101_64x4d",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ResNeXt101_64X4D_Weights.IMAGENET1K_V1",
    ),
    info(
        "wide_resnet50_2",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
    ),
    info(
        "wide_resnet101_2",
        "ResNet",
        classification::resnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
    ),
    info(
        "densenet121",
        "DenseNet",
        classification::densenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "DenseNet121_Weights.IMAGENET1K_V1",
    ),
    info(
        "densenet161",
        "DenseNet",
        classification::densenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "DenseNet161_Weights.IMAGENET1K_V1",
    ),
    info(
        "densenet169",
        "DenseNet",
        classification::densenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "DenseNet169_Weights.IMAGENET1K_V1",
    ),
    info(
        "densenet201",
        "DenseNet",
        classification::densenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "DenseNet201_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b0",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            256,
            224,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b1",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            255,
            240,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B1_Weights.IMAGENET1K_V2",
    ),
    info(
        "efficientnet_b2",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            288,
            288,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B2_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b3",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            320,
            300,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B3_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b4",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            384,
            380,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B4_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b5",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            456,
            456,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B5_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b6",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            528,
            528,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B6_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_b7",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            600,
            600,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_B7_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_v2_s",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            384,
            384,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_v2_m",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            480,
            480,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "EfficientNet_V2_M_Weights.IMAGENET1K_V1",
    ),
    info(
        "efficientnet_v2_l",
        "EfficientNet",
        classification::efficientnet::build,
        t(
            480,
            480,
            Interpolation::Bicubic,
            [0.5, 0.5, 0.5],
            [0.5, 0.5, 0.5],
        ),
        "EfficientNet_V2_L_Weights.IMAGENET1K_V1",
    ),
    info(
        "mobilenet_v2",
        "MobileNetV2",
        classification::mobilenet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MobileNet_V2_Weights.IMAGENET1K_V2",
    ),
    info(
        "mobilenet_v3_large",
        "MobileNetV3",
        classification::mobilenet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
    ),
    info(
        "mobilenet_v3_small",
        "MobileNetV3",
        classification::mobilenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
    ),
    info(
        "squeezenet1_0",
        "SqueezeNet",
        classification::squeezenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "SqueezeNet1_0_Weights.IMAGENET1K_V1",
    ),
    info(
        "squeezenet1_1",
        "SqueezeNet",
        classification::squeezenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "SqueezeNet1_1_Weights.IMAGENET1K_V1",
    ),
    info(
        "mnasnet0_5",
        "MNASNet",
        classification::mnasnet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MNASNet0_5_Weights.IMAGENET1K_V1",
    ),
    info(
        "mnasnet0_75",
        "MNASNet",
        classification::mnasnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MNASNet0_75_Weights.IMAGENET1K_V1",
    ),
    info(
        "mnasnet1_0",
        "MNASNet",
        classification::mnasnet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MNASNet1_0_Weights.IMAGENET1K_V1",
    ),
    info(
        "mnasnet1_3",
        "MNASNet",
        classification::mnasnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "MNASNet1_3_Weights.IMAGENET1K_V1",
    ),
    info(
        "shufflenet_v2_x0_5",
        "ShuffleNetV2",
        classification::shufflenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1",
    ),
    info(
        "shufflenet_v2_x1_0",
        "ShuffleNetV2",
        classification::shufflenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1",
    ),
    info(
        "shufflenet_v2_x1_5",
        "ShuffleNetV2",
        classification::shufflenet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1",
    ),
    info(
        "shufflenet_v2_x2_0",
        "ShuffleNetV2",
        classification::shufflenet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1",
    ),
    info(
        "googlenet",
        "GoogLeNet",
        classification::googlenet::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "GoogLeNet_Weights.IMAGENET1K_V1",
    ),
    info(
        "inception_v3",
        "Inception3",
        classification::inception::build,
        t(
            342,
            299,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "Inception_V3_Weights.IMAGENET1K_V1",
    ),
    info(
        "convnext_tiny",
        "ConvNeXt",
        classification::convnext::build,
        t(
            236,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
    ),
    info(
        "convnext_small",
        "ConvNeXt",
        classification::convnext::build,
        t(
            230,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ConvNeXt_Small_Weights.IMAGENET1K_V1",
    ),
    info(
        "convnext_base",
        "ConvNeXt",
        classification::convnext::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ConvNeXt_Base_Weights.IMAGENET1K_V1",
    ),
    info(
        "convnext_large",
        "ConvNeXt",
        classification::convnext::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "ConvNeXt_Large_Weights.IMAGENET1K_V1",
    ),
    info(
        "regnet_x_400mf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_400MF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_800mf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_800MF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_1_6gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_1_6GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_3_2gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_3_2GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_8gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_8GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_16gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_16GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_x_32gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_X_32GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_400mf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_400MF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_800mf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_800MF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_1_6gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_1_6GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_3_2gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_3_2GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_8gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_8GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_16gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_16GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_32gf",
        "RegNet",
        classification::regnet::build,
        t(
            232,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_32GF_Weights.IMAGENET1K_V2",
    ),
    info(
        "regnet_y_128gf",
        "RegNet",
        classification::regnet::build,
        t(
            384,
            384,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "RegNet_Y_128GF_Weights.IMAGENET1K_SWAG_E2E_V1",
    ),
    info(
        "vgg11",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG11_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg11_bn",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG11_BN_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg13",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG13_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg13_bn",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG13_BN_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg16",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG16_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg16_bn",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG16_BN_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg19",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG19_Weights.IMAGENET1K_V1",
    ),
    info(
        "vgg19_bn",
        "VGG",
        classification::vgg::build,
        t(
            256,
            224,
            Interpolation::Bilinear,
            IMAGENET_MEAN,
            IMAGENET_STD,
        ),
        "VGG19_BN_Weights.IMAGENET1K_V1",
    ),
];

/// Every model of the zoo.
pub fn models() -> &'static [ModelInfo] {
    MODELS
}

/// Look a model up by its torchvision name.
pub fn find(name: &str) -> Result<&'static ModelInfo, ZooError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ZooError::UnknownModel(name.to_string()))
}

/// Build a model by name, the way torchvision's `get_model(name, weights=...)` does.
pub fn build(name: &str, opts: &ModelOptions) -> Result<Model, ZooError> {
    let info = find(name)?;
    let mut opts = opts.clone();
    if opts.transform_input.is_none() {
        opts.transform_input = Some(matches!(opts.weights, Weights::StateDict(_)));
    }
    let mut graph = info.graph(&opts);
    let load_report = match std::mem::take(&mut opts.weights) {
        Weights::None => None,
        Weights::Formula => {
            weights::init_formula(&mut graph);
            None
        }
        Weights::StateDict(sd) => Some(
            weights::load_state_dict(&mut graph, sd, opts.strict).map_err(|source| {
                ZooError::Graph {
                    model: name.to_string(),
                    source,
                }
            })?,
        ),
    };
    // QAT trains the unfused graph: `qvision_train::prepare_qat` fuses Conv+BN for training
    // itself (BatchNorm folded in the forward pass), as PyTorch's `prepare_qat` swaps in ConvBn.
    let fused = opts.quantize && !opts.skip_fuse && !opts.is_qat;
    if fused {
        graph = qvision_graph::passes::optimize_for_inference(&graph).map_err(|source| {
            ZooError::Graph {
                model: name.to_string(),
                source,
            }
        })?;
    }
    Ok(Model {
        info,
        graph,
        load_report,
        quantizable: opts.quantize,
        fused,
    })
}
