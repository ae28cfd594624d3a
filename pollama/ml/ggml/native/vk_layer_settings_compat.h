/* Force-included (-include) into the C++ files of pollama's Vulkan build of ggml (build.sh).
 *
 * ggml-vulkan.cpp (ggml 0.25.3) builds a vk::LayerSettingsCreateInfoEXT for its instance
 * without checking that the Vulkan headers know VK_EXT_layer_settings, which arrived in
 * Vulkan-Headers 1.3.261. Debian 12 ships 1.3.239, so the build stops at "'LayerSettingEXT'
 * is not a member of 'vk'". ggml only chains that struct into vkCreateInstance's pNext and
 * only asks for the validation layer when the extension is found at run time, so with older
 * headers it is enough for the three names to exist with the extension's layout: the values
 * below are the extension's own (VK_STRUCTURE_TYPE_LAYER_SETTINGS_CREATE_INFO_EXT is
 * 1000496000). With headers that have the extension this file defines nothing.
 */
#pragma once
#if defined(__cplusplus) && defined(__has_include)
#if __has_include(<vulkan/vulkan_core.h>)
#include <vulkan/vulkan_core.h>
#include <cstdint>
#include <vector>

#ifndef VK_EXT_layer_settings
namespace vk {

enum class LayerSettingTypeEXT : int32_t {
    eBool32 = 0, eInt32 = 1, eInt64 = 2, eUint32 = 3, eUint64 = 4, eFloat32 = 5, eFloat64 = 6, eString = 7,
};

struct LayerSettingEXT {  // VkLayerSettingEXT
    const char *pLayerName;
    const char *pSettingName;
    LayerSettingTypeEXT type;
    uint32_t valueCount;
    const void *pValues;
};

struct LayerSettingsCreateInfoEXT {  // VkLayerSettingsCreateInfoEXT
    VkStructureType sType = static_cast<VkStructureType>(1000496000);
    const void *pNext = nullptr;
    uint32_t settingCount = 0;
    const LayerSettingEXT *pSettings = nullptr;

    explicit LayerSettingsCreateInfoEXT(const std::vector<LayerSettingEXT> &settings)
        : settingCount(static_cast<uint32_t>(settings.size())), pSettings(settings.data()) {}
};

}  // namespace vk
#endif
#endif
#endif
